"""UniVarFL (FedUV's regularizers) on Fed-Heart-Disease with a small MLP.

The model is an MLP with one hidden layer of 32 units, because the
uniformity term acts on the features the head reads, and logistic
regression has no hidden features. The weights are FedUV's code defaults
(variance 2.5, uniformity 0.5), with the variance hinge on the class
probabilities. Every other setting is the default experiment's
(`fed_heart_disease.py`).

Run:
  python scripts/train.py --config=configs/fed_heart_disease_univarfl.py \
      --workdir=/tmp/fed_heart_disease_univarfl
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the UniVarFL config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease.py")
  )
  config.model.name = "mlp"
  config.model.hidden_sizes = (32,)
  config.algorithm.name = "univarfl"
  config.algorithm.variance_weight = 2.5
  config.algorithm.uniformity_weight = 0.5
  config.algorithm.stop_gradient_bandwidth = True
  # "probabilities" (FedUV's code) or "features" (per-dimension std).
  config.algorithm.variance_target = "probabilities"
  config.algorithm.feature_std_target = 1.0
  return config
