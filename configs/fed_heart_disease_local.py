"""Local baseline on Fed-Heart-Disease: each hospital trains alone.

Each of the four hospitals trains its own model on its own training rows with
the default experiment's client settings (`fed_heart_disease.py`), one sub-run
per site under `<workdir>/local_<site>`. The summary reports each site's own
model on its own test split, and every local model on every test split.

Run:
  python scripts/train.py --config=configs/fed_heart_disease_local.py \
      --workdir=/tmp/fed_heart_disease_local
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the local-training config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease.py")
  )
  config.algorithm.name = "local"
  return config
