"""Agnostic federated learning on Fed-Heart-Disease: minimax over hospitals.

The server keeps mixture weights over the four hospitals, moves them toward
the sites with the highest loss, and averages the deltas with them. The
headline metric is the worst site's accuracy (`worst_client` in
final_metrics.json). Every other setting is the default experiment's
(`fed_heart_disease.py`), with all four sites in every round.

Run:
  python scripts/train.py --config=configs/fed_heart_disease_afl.py \
      --workdir=/tmp/fed_heart_disease_afl
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the AFL config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease.py")
  )
  config.algorithm.name = "afl"
  config.algorithm.lambda_learning_rate = 0.1
  return config
