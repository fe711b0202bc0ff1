"""FedHypeVAE on frozen digits embeddings, 10 clients with label skew.

Data ("digits_embeddings"): 30% of each digit class is a public split that
trains a small MLP encoder; the other 1,258 digits are mapped to its
penultimate 32-unit layer, standardized with public statistics, and split
over 10 clients with Dirichlet label skew alpha = 0.3, each client keeping
20% of its rows as its held-out test split (`fedjax_med.data.embeddings`).

Clients train hypernetwork-generated conditional VAEs on their embeddings
(`fedjax_med.algorithms.fedhypevae`); after training the server fits a
meta-code to DP class statistics, draws 200 synthetic embeddings per class
and trains a linear classifier on them. The experiment loop evaluates that
classifier on every client's test split: `pooled_test_accuracy` and
`long_tail.pooled.balanced_accuracy` in `final_metrics.json`.

Privacy: record-level DP-SGD inside each client (Poisson batches of
expected size 8, clip norm 1.5, the FedHypeVAE paper's value) and the class
statistics released with noise multiplier 20. The DP-SGD noise is
calibrated so that the whole run, statistics release included, spends
epsilon = 1 at delta = 1e-5; `final_metrics.json` records the epsilon
spent. The smallest client (26 training rows, sampled at rate 8/26) sets
the calibrated noise multiplier, about 15.7. Without DP:
--config.privacy.mode=none.

Run:
  python scripts/train.py --config=configs/digits_fedhypevae.py \\
      --workdir=/tmp/digits_fedhypevae
  python scripts/train.py --config=configs/digits_fedhypevae.py \\
      --workdir=/tmp/digits_fedhypevae_nodp --config.privacy.mode=none
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the FedHypeVAE digits-embeddings config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease.py")
  )
  config.num_rounds = 30
  config.eval_every = 30
  config.checkpoint_every = 10
  config.data = ml_collections.ConfigDict(
    dict(
      name="digits_embeddings",
      partition="dirichlet",
      num_clients=10,
      alpha=0.3,
      min_partition_size=10,
      test_fraction=0.2,
      seed=0,
    )
  )
  # The downstream classifier that the synthetic embeddings train.
  config.model = ml_collections.ConfigDict(
    dict(name="logistic_regression", library="flax")
  )

  config.algorithm = ml_collections.ConfigDict()
  config.algorithm.name = "fedhypevae"
  config.algorithm.latent_dim = 16
  config.algorithm.hidden_size = 128
  config.algorithm.code_dim = 8
  config.algorithm.hyper_hidden_size = 64
  config.algorithm.mmd_weight = 1.0
  config.algorithm.mmd_gradient = "local"
  config.algorithm.mmd_samples = 16
  config.algorithm.code_weight = 1e-3
  config.algorithm.code_radius = 5.0
  config.algorithm.lipschitz_weight = 1e-4
  config.algorithm.noise_placement = "sum"
  config.algorithm.private_local_updates = True
  config.algorithm.statistics_clip_norm = 6.0
  config.algorithm.synthesis = ml_collections.ConfigDict(
    dict(
      num_meta_codes=1,
      latent_sampling="class_prior",
      samples_per_class=200,
      meta_code_steps=200,
      covariance_weight=1.0,
      classifier_steps=300,
    )
  )

  config.client.optimizer = "adam"
  config.client.learning_rate = 1e-3
  config.client.num_local_steps = 5
  config.client.batch_size = 8
  config.server.learning_rate = 1.0

  config.cohort.clients_per_round = 10
  config.cohort.sampling = "uniform"
  config.cohort.weighting = "example"

  config.privacy.mode = "example"
  config.privacy.clip_norm = 1.5
  config.privacy.target_epsilon = 1.0
  config.privacy.delta = 1e-5
  config.privacy.statistics_noise_multiplier = 20.0
  return config
