"""q-FedAvg on Fed-Heart-Disease: the q-FFL objective with q = 1.

q-FFL weights each hospital's loss by its own loss to the power q, so the
sites the global model fits worst get more weight; the headline metric is
the worst site's accuracy (`worst_client` in final_metrics.json). Every
other setting is the default experiment's (`fed_heart_disease.py`). The
server learning rate 1 gives q-FedAvg's step `w - sum Delta_k / sum h_k`.

Run:
  python scripts/train.py --config=configs/fed_heart_disease_qfedavg.py \
      --workdir=/tmp/fed_heart_disease_qfedavg
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the q-FedAvg config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease.py")
  )
  config.algorithm.name = "qfedavg"
  config.algorithm.q = 1.0
  return config
