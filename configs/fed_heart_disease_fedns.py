"""FedNS (sample-space sketched Newton) on Fed-Heart-Disease, float64.

Each hospital sends its gradient and a 10 x 14 sketch of the square root of
its logistic-regression Hessian instead of the 14 x 14 Hessian
(`fedjax_med/algorithms/fedns.py`); a backtracking line search sets the
step size.

Run:
  python scripts/train.py --config=configs/fed_heart_disease_fedns.py \\
      --workdir=/tmp/fed_heart_disease_fedns
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the FedNS config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease_newton.py")
  )
  config.num_rounds = 20
  config.algorithm.name = "fedns"
  config.algorithm.sketch = "gaussian"  # Or "rademacher", "srht".
  config.algorithm.sketch_size = 10
  config.algorithm.line_search = True
  return config
