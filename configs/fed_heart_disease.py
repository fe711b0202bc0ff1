"""FedAvg with logistic regression across the four Fed-Heart-Disease hospitals.

The main experiment: Cleveland, Hungary, Switzerland and VA Long Beach are the
clients, each with its own stratified 66/34 train/test split, features
standardized with statistics aggregated from the sites. Every round all four
hospitals train locally and the server averages their deltas by example count.

Run:
  python scripts/train.py --config=configs/fed_heart_disease.py \
      --workdir=/tmp/fed_heart_disease

Switch the method with --config.algorithm.name (fedavg, fedprox, scaffold,
fedavgm, fedadagrad, fedadam, fedyogi, or the baselines pooled and local).
Add --config.protocol=leave_one_site_out to test on each unseen hospital.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the default Fed-Heart-Disease config."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_rounds = 50
  config.eval_every = 5
  config.checkpoint_every = 10
  config.progress_bar = True
  # "standard", or "leave_one_site_out": train without each site in turn and
  # test on it (fedjax_med/training/protocols.py). holdout_rows is "all"
  # (the unseen site's train and test rows) or "test".
  config.protocol = "standard"
  config.holdout_rows = "all"

  config.data = ml_collections.ConfigDict()
  config.data.name = "fed_heart_disease"
  config.data.split_seed = 42
  config.data.test_fraction = 0.34
  config.data.standardize = True
  config.data.target = "binary"

  config.model = ml_collections.ConfigDict()
  config.model.name = "logistic_regression"
  config.model.library = "flax"

  config.algorithm = ml_collections.ConfigDict()
  config.algorithm.name = "fedavg"
  config.algorithm.mu = 0.1  # FedProx proximal weight.

  config.client = ml_collections.ConfigDict()
  config.client.optimizer = "sgd"
  config.client.learning_rate = 0.05
  config.client.schedule = "constant"
  config.client.decay_rate = 0.5
  config.client.transition_rounds = 10
  config.client.momentum = 0.9
  config.client.num_local_steps = 10
  config.client.batch_size = 16

  config.server = ml_collections.ConfigDict()
  config.server.learning_rate = 1.0
  config.server.schedule = "constant"
  config.server.momentum = 0.9
  config.server.b1 = 0.9
  config.server.b2 = 0.99
  config.server.tau = 1e-3

  config.cohort = ml_collections.ConfigDict()
  config.cohort.clients_per_round = 4
  config.cohort.sampling = "uniform"
  config.cohort.poisson_rate = 0.0  # Used when sampling="poisson".
  config.cohort.clients_per_chunk = 0  # 0 runs the whole cohort at once.
  # Devices to shard each round's cohort over: 0 or 1 runs on one device,
  # N > 1 on the first N of jax.devices(). On a CPU, scripts/train.py makes
  # N CPU devices (one thread each), so N up to the core count uses every
  # core; XLA_FLAGS=--xla_force_host_platform_device_count=N takes precedence.
  config.cohort.num_devices = 0
  # With clients_per_chunk = 0, a budget > 0 picks the largest chunk whose
  # compiled round peaks at most at this many MB per device, the state and
  # data included (the round is compiled at a few chunk sizes first); 0
  # means no budget.
  config.cohort.memory_budget_mb = 0.0
  config.cohort.weighting = "example"

  # Differential privacy; mode "none" trains without it. "client" is
  # DP-FedAvg (each client's delta clipped, Gaussian noise on the sum);
  # "example" is DP-SGD inside every client (each record clipped).
  config.privacy = ml_collections.ConfigDict()
  config.privacy.mode = "none"
  config.privacy.clip_norm = 1.0
  config.privacy.noise_multiplier = 1.0
  # With target_epsilon > 0, training stops before the round that would
  # exceed it, and calibrate_noise picks the smallest noise_multiplier that
  # reaches num_rounds within it.
  config.privacy.target_epsilon = 0.0
  config.privacy.calibrate_noise = True
  config.privacy.delta = 1e-5
  config.privacy.accountant = "rdp"  # "rdp" or "pld".
  config.privacy.adjacency = "add_remove"  # Or "replace_one".
  config.privacy.stop_at_budget = True
  config.privacy.adaptive_clipping = False
  config.privacy.target_unclipped_quantile = 0.5
  config.privacy.clip_learning_rate = 0.2
  config.privacy.clipped_count_stddev = 0.0  # 0 picks a default.
  config.privacy.batch_sampling = "poisson"  # DP-SGD: or "fixed_size".
  config.privacy.poisson_batch_capacity = 0  # DP-SGD: 0 means no cap.
  config.privacy.secure_aggregation = False
  config.privacy.secagg_bits = 32  # Ring modulus 2**bits.
  config.privacy.secagg_threshold = 0  # 0 picks a majority threshold.
  config.privacy.secagg_dropout_rate = 0.0
  return config
