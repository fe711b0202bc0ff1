"""Exact federated Newton on Fed-Heart-Disease logistic regression, float64.

Every round each of the four hospitals sends the gradient and the 14 x 14
Hessian of its L2-regularized mean loss, and the server takes a full
Newton step (`fedjax_med/algorithms/newton.py`). The run uses float64, so
it reaches the pooled optimum to about 1e-15 in loss within a few rounds;
it is the reference that the sketched methods (FedNS, FLeNS) approximate.

Run:
  python scripts/train.py --config=configs/fed_heart_disease_newton.py \\
      --workdir=/tmp/fed_heart_disease_newton
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the exact federated Newton config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease.py")
  )
  config.float64 = True
  config.num_rounds = 10
  config.eval_every = 5
  config.algorithm.name = "newton"
  # Weight of (l2 / 2) ||w||^2 added to every client's mean loss.
  config.algorithm.l2 = 1e-3
  config.algorithm.newton_step = 1.0
  return config
