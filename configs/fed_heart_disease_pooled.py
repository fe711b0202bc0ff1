"""Pooled baseline on Fed-Heart-Disease: one model trained centrally.

The training rows of all four hospitals form a single client, which runs
`num_rounds * num_local_steps` minibatch SGD steps with the default
experiment's client settings (`fed_heart_disease.py`). The model is then
evaluated on every hospital's test split. This is the reference a federated
method should approach.

Run:
  python scripts/train.py --config=configs/fed_heart_disease_pooled.py \
      --workdir=/tmp/fed_heart_disease_pooled
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
  """Returns the pooled-training config."""
  config = _base_config()
  config.algorithm.name = "pooled"
  return config
