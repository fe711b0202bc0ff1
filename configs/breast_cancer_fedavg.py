"""FedAvg with logistic regression on breast_cancer split over 10 clients.

The scikit-learn breast cancer table (569 patients, 30 features) is split
over 10 clients with Dirichlet(0.5) label skew, and all 10 train every
round. A small model with 10 clients per round: the workload on which the
benchmark compares the compiled round with Flower's simulation engine
(`fedjax_med.distributed.flower.simulation`).

Run:
  python scripts/train.py --config=configs/breast_cancer_fedavg.py \
      --workdir=/tmp/breast_cancer_fedavg
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config():
  """Returns the breast_cancer FedAvg config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease.py")
  )
  config.num_rounds = 20
  config.data = ml_collections.ConfigDict(
    dict(
      name="breast_cancer",
      partition="dirichlet",
      num_clients=10,
      alpha=0.5,
      min_partition_size=10,
      test_fraction=0.2,
      seed=0,
      standardize=True,
    )
  )
  config.cohort.clients_per_round = 10
  return config
