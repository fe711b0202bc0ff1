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

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config():
  """Returns the digits CNN config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease.py")
  )
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
