"""Ditto on Fed-Heart-Disease: a personal model per hospital.

Each hospital trains a personal logistic regression pulled toward the
FedAvg global model with weight ditto_lambda = 0.1, for as many steps per
round as the global model's local training (personal_steps = 0 means
client.num_local_steps). final_metrics.json reports the global model as
usual and, under "personalized", each hospital's own model on its own test
split. Every other setting is the default experiment's
(`fed_heart_disease.py`).

Run:
  python scripts/train.py --config=configs/fed_heart_disease_ditto.py \
      --workdir=/tmp/fed_heart_disease_ditto
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the Ditto config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease.py")
  )
  config.algorithm.name = "ditto"
  config.algorithm.ditto_lambda = 0.1
  config.algorithm.personal_steps = 0
  config.algorithm.personal_learning_rate = 0.0
  return config
