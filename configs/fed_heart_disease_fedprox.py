"""FedProx on Fed-Heart-Disease: FedAvg plus a proximal term, mu = 0.1.

Every other setting is the default experiment's (`fed_heart_disease.py`).
With 10 local SGD steps at learning rate 0.05 the local models drift little
from the global one, so the proximal term changes the result only slightly.

Run:
  python scripts/train.py --config=configs/fed_heart_disease_fedprox.py \
      --workdir=/tmp/fed_heart_disease_fedprox
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the FedProx config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease.py")
  )
  config.algorithm.name = "fedprox"
  config.algorithm.mu = 0.1
  return config
