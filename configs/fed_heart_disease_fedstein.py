"""FedStein on Fed-Heart-Disease: local BN affine, shrunk shared statistics.

The model is an MLP with one hidden layer of 32 units followed by batch
normalization. Each hospital keeps that layer's scale and bias; the server
averages the running statistics and shrinks them with the James-Stein
estimator (`fedjax_med.algorithms.fedstein` lists the options). Clients are
weighted uniformly, as in the paper's Algorithm 1.

Run:
  python scripts/train.py --config=configs/fed_heart_disease_fedstein.py \
      --workdir=/tmp/fed_heart_disease_fedstein
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the FedStein config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease.py")
  )
  config.algorithm.name = "fedstein"
  config.algorithm.js_variance = "coordinates"
  config.algorithm.js_target = "zero"
  config.algorithm.positive_part = True
  config.algorithm.stat_mode = "running_override"
  config.algorithm.variance_floor = 1e-5
  config.model.name = "mlp"
  config.model.hidden_sizes = (32,)
  config.model.use_batch_norm = True
  config.cohort.weighting = "uniform"
  return config
