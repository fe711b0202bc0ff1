"""SCAFFOLD on Fed-Heart-Disease (option II control variates).

Every other setting is the default experiment's (`fed_heart_disease.py`),
including server learning rate 1.0, so the server adds the averaged delta
unscaled.

Run:
  python scripts/train.py --config=configs/fed_heart_disease_scaffold.py \
      --workdir=/tmp/fed_heart_disease_scaffold
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the SCAFFOLD config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease.py")
  )
  config.algorithm.name = "scaffold"
  return config
