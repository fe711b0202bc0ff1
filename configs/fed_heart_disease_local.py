"""Local baseline on Fed-Heart-Disease: each hospital trains alone.

Each of the four hospitals trains its own model on its own training rows with
the default experiment's client settings (`fed_heart_disease.py`), one sub-run
per site under `<workdir>/local_<site>`. The summary reports each site's own
model on its own test split, and every local model on every test split.

Run:
  python scripts/train.py --config=configs/fed_heart_disease_local.py \
      --workdir=/tmp/fed_heart_disease_local
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
  """Returns the local-training config."""
  config = _base_config()
  config.algorithm.name = "local"
  return config
