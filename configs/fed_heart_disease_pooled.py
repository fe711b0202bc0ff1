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

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the pooled-training config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease.py")
  )
  config.algorithm.name = "pooled"
  return config
