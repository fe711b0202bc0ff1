"""FedAvg with the patch-convolution CNN on scikit-learn digits.

The 1,797 8x8 digit images are split over 20 clients with Dirichlet(0.5)
label skew, so each client sees a different mix of digits; 10 clients train
each round. Digits are not medical images: no labelled medical image set
loads offline, and this task exercises the image path (CNN, label skew,
partial participation) on real data.

Run:
  python scripts/train.py --config=configs/digits_cnn.py \
      --workdir=/tmp/digits_cnn
"""

import importlib.util
import os

import ml_collections


def _base_config():
  path = os.path.join(os.path.dirname(__file__), "fed_heart_disease.py")
  spec = importlib.util.spec_from_file_location("fed_heart_disease", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  """Returns the digits CNN config."""
  config = _base_config()
  config.num_rounds = 30
  config.data = ml_collections.ConfigDict(
    dict(
      name="digits",
      partition="dirichlet",
      num_clients=20,
      alpha=0.5,
      min_partition_size=10,
      test_fraction=0.2,
      seed=0,
      as_images=True,
    )
  )
  config.model = ml_collections.ConfigDict(dict(name="cnn", library="flax"))
  config.client.learning_rate = 0.1
  config.client.num_local_steps = 10
  config.client.batch_size = 16
  config.cohort.clients_per_round = 10
  config.cohort.clients_per_chunk = 5
  return config
