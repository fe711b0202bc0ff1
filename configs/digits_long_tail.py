"""FedAvg with the patch-convolution CNN on long-tailed, label-skewed digits.

The 1,797 scikit-learn digits are subsampled per class with an exponential
profile and imbalance ratio 10: 174 images of digit 0 down to 17 of digit 9,
707 in all. They are then split over 10 clients with Dirichlet(0.5) label
skew, so the rare digits are held by few clients. Each client keeps 20% of
its images for testing, so test splits are long-tailed as well.

The long-tail fields (`client.loss`, `client.loss_options`, FEDTAIL's
`algorithm.rho`, `matching_weight`, `tail_fraction`, and
`long_tail.tail_fraction`) are those of `fed_heart_disease_severity.py`.

Run:
  python scripts/train.py --config=configs/digits_long_tail.py \
      --workdir=/tmp/digits_long_tail --config.data.profile=zipf
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the long-tailed digits config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease_severity.py")
  )
  config.num_rounds = 30
  config.data = ml_collections.ConfigDict(
    dict(
      name="digits_long_tail",
      profile="exponential",
      imbalance_ratio=10.0,
      num_clients=10,
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
