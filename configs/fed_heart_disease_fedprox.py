"""FedProx on Fed-Heart-Disease: FedAvg plus a proximal term, mu = 0.1.

Every other setting is the default experiment's (`fed_heart_disease.py`).
With 10 local SGD steps at learning rate 0.05 the local models drift little
from the global one, so the proximal term changes the result only slightly.

Run:
  python scripts/train.py --config=configs/fed_heart_disease_fedprox.py \
      --workdir=/tmp/fed_heart_disease_fedprox
"""

import importlib.util
import pathlib

import ml_collections


def _base_config() -> ml_collections.ConfigDict:
  """Loads the default experiment's config from the file next to this one."""
  path = pathlib.Path(__file__).with_name("fed_heart_disease.py")
  spec = importlib.util.spec_from_file_location("fed_heart_disease", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config() -> ml_collections.ConfigDict:
  """Returns the FedProx config."""
  config = _base_config()
  config.algorithm.name = "fedprox"
  config.algorithm.mu = 0.1
  return config
