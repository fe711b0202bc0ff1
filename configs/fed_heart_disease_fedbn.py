"""FedBN on Fed-Heart-Disease: an MLP whose batch normalization stays local.

The model is an MLP with one hidden layer of 32 units followed by batch
normalization. Each hospital keeps that layer's scale, bias and running
statistics; the two dense layers follow FedAvg with example weighting, as in
the default experiment (`fed_heart_disease.py`). Sites outside the
federation get the mean of the four hospitals' normalization layers.

Run:
  python scripts/train.py --config=configs/fed_heart_disease_fedbn.py \
      --workdir=/tmp/fed_heart_disease_fedbn
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the FedBN config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease.py")
  )
  config.algorithm.name = "fedbn"
  config.model.name = "mlp"
  config.model.hidden_sizes = (32,)
  config.model.use_batch_norm = True
  return config
