"""MOON on Fed-Heart-Disease with a small MLP.

The model is an MLP with one hidden layer of 32 units, because the
contrastive term acts on the features the head reads, and logistic
regression has no hidden features. `mu = 1` and temperature 0.5 (see
`fedjax_med.algorithms.moon`). Every other setting is the default
experiment's (`fed_heart_disease.py`).

Run:
  python scripts/train.py --config=configs/fed_heart_disease_moon.py \
      --workdir=/tmp/fed_heart_disease_moon
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the MOON config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease.py")
  )
  config.model.name = "mlp"
  config.model.hidden_sizes = (32,)
  config.algorithm.name = "moon"
  # MOON's mu; the base config's algorithm.mu is FedProx's proximal weight.
  config.algorithm.contrastive_weight = 1.0
  config.algorithm.temperature = 0.5
  return config
