"""SCAFFOLD on Fed-Heart-Disease (option II control variates).

Every other setting is the default experiment's (`fed_heart_disease.py`),
including server learning rate 1.0, so the server adds the averaged delta
unscaled.

Run:
  python scripts/train.py --config=configs/fed_heart_disease_scaffold.py \
      --workdir=/tmp/fed_heart_disease_scaffold
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
  """Returns the SCAFFOLD config."""
  config = _base_config()
  config.algorithm.name = "scaffold"
  return config
