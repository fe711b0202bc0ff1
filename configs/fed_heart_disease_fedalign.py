"""FedAlign on Fed-Heart-Disease, with a one-hidden-layer MLP.

FedAlign's alignment terms act on the representation the head reads, which
for logistic regression is the input itself and does not depend on the
parameters. This config therefore trains the zoo MLP with one hidden layer
of 32 units. Tabular rows have no per-image statistics, so a site's style is
its per-feature mean and standard deviation, and MixStyle re-standardizes a
batch towards another hospital's statistics (see
`fedjax_med.algorithms.fedalign`). Every other setting is the default
experiment's (`fed_heart_disease.py`).

Run:
  python scripts/train.py --config=configs/fed_heart_disease_fedalign.py \
      --workdir=/tmp/fed_heart_disease_fedalign
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the FedAlign Fed-Heart-Disease config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease.py")
  )
  config.model.name = "mlp"
  config.model.hidden_sizes = (32,)
  config.algorithm.name = "fedalign"
  config.algorithm.style_source = "cross_client"
  config.algorithm.style_fraction = 0.1
  config.algorithm.mix_alpha = 0.1
  config.algorithm.mix_probability = 1.0
  config.algorithm.supcon_weight = 0.1
  config.algorithm.js_weight = 0.1
  config.algorithm.consistency_weight = 0.1
  config.algorithm.temperature = 0.1
  config.algorithm.standard_supcon = False
  return config
