"""Builds an algorithm from an `ml_collections` config.

The config sections read here are `algorithm`, `client`, `server`, `cohort`
and `privacy`; `configs/fed_heart_disease.py` shows every field with its
default. Learning rates can follow a schedule over rounds: `schedule` is
"constant", "exponential_decay" (`lr * decay_rate ** (round /
transition_rounds)`) or "cosine" (cosine decay to zero over `num_rounds`).

`privacy.mode` selects differential privacy (a config without a `privacy`
section trains without it):

  * "client": DP-FedAvg. The DP aggregator of
    `fedjax_med.privacy.dp_aggregation` replaces the weighted mean for
    fedavg, fedprox and the FedOpt server optimizers, with the expected
    cohort size `poisson_rate * num_clients` ("poisson" sampling) or
    `clients_per_round` ("uniform") as its public denominator. Deltas are
    weighted uniformly, so `cohort.weighting` must be "uniform". SCAFFOLD is
    rejected because its control variates would be released without noise.
  * "example": DP-SGD inside every client, for every algorithm.

`client.loss` names the local training loss (default "cross_entropy"; see
`fedjax_med.losses.registry` for the others), and `client.loss_options.<loss>`
contains its options, e.g. `--config.client.loss=focal
--config.client.loss_options.focal.gamma=1.0`. Losses that need class
frequencies get the global training counts per class, summed from the
clients' label histograms (`fedjax_med.losses.global_class_counts`). Under the
"pooled" and "local" baselines these are the counts of the data they train on.

`algorithm.name="fedtail"` reads `algorithm.rho`, `algorithm.matching_weight`
and `algorithm.tail_fraction` (defaults in `fedtail.FedTailConfig`).

`privacy.noise_multiplier` is used as given; a caller that calibrates it from
`privacy.target_epsilon` must write the calibrated value into the config
before calling `build_algorithm`. Besides the fields of the default config,
`privacy.poisson_batch_capacity` (default 0, one slot per padded row) caps
the slots of a DP-SGD Poisson batch.
"""

from __future__ import annotations

import math

import jax
import ml_collections
import optax
from absl import logging

from fedjax_med.algorithms import fedavg as fedavg_lib
from fedjax_med.algorithms import fedopt, fedprox, fedtail, scaffold
from fedjax_med.core.aggregation import Aggregator
from fedjax_med.core.algorithm import FederatedAlgorithm
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.losses import global_class_counts, make_loss
from fedjax_med.losses.long_tail import LossFn
from fedjax_med.models.base import Model
from fedjax_med.privacy import dp_aggregation, dp_sgd, secure_aggregation

# Server optimizer behind each FedOpt-style name.
_FEDOPT_SERVER = {
  "fedavgm": "momentum",
  "fedadagrad": "adagrad",
  "fedadam": "adam",
  "fedyogi": "yogi",
}
ALGORITHM_NAMES = ("fedavg", "fedprox", "scaffold", "fedtail", *_FEDOPT_SERVER)
SCHEDULES = ("constant", "exponential_decay", "cosine")
PRIVACY_MODES = ("none", "client", "example")


def make_schedule(
  section: ml_collections.ConfigDict, num_rounds: int, name: str
) -> optax.Schedule:
  """Builds a learning-rate schedule over rounds from a config section."""
  learning_rate = section.learning_rate
  if not learning_rate > 0:
    raise ValueError(
      f"{name}.learning_rate={learning_rate} must be positive; pass e.g. "
      f"--config.{name}.learning_rate=0.1."
    )
  kind = section.get("schedule", "constant")
  if kind == "constant":
    return optax.constant_schedule(learning_rate)
  if kind == "exponential_decay":
    return optax.exponential_decay(
      learning_rate,
      transition_steps=section.get("transition_rounds", 10),
      decay_rate=section.get("decay_rate", 0.5),
    )
  if kind == "cosine":
    return optax.cosine_decay_schedule(learning_rate, max(num_rounds, 1))
  raise ValueError(
    f"{name}.schedule={kind!r} is unknown; use one of {SCHEDULES}."
  )


def make_client_loss(
  config: ml_collections.ConfigDict, data: FederatedData
) -> LossFn:
  """Builds the per-example loss named by `config.client.loss`.

  A config without `client.loss` trains with cross-entropy. Options come
  from `client.loss_options.<loss name>` when that section exists.

  Raises:
    ValueError: For an unknown loss or option, or an invalid option value.
  """
  name = config.client.get("loss", "cross_entropy")
  sections = config.client.get("loss_options", None)
  options = {}
  if sections is not None and name in sections:
    options = dict(sections[name])
  counts = global_class_counts(data.train, data.num_classes)
  return make_loss(name, counts, **options)


def fedtail_config(config: ml_collections.ConfigDict) -> fedtail.FedTailConfig:
  """Reads FEDTAIL's settings from `config.algorithm`, with defaults."""
  defaults = fedtail.FedTailConfig()
  section = config.algorithm
  return fedtail.FedTailConfig(
    rho=float(section.get("rho", defaults.rho)),
    matching_weight=float(
      section.get("matching_weight", defaults.matching_weight)
    ),
    tail_fraction=float(section.get("tail_fraction", defaults.tail_fraction)),
  )


def _model_state_names(model: Model, data: FederatedData) -> list[str]:
  """Returns the model's non-trainable collections (e.g. "batch_stats")."""
  sample = jax.ShapeDtypeStruct((1, *data.feature_shape), data.train.x.dtype)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), sample)
  return sorted(k for k in variables if k != "params")


def _binomial_tail(n: int, rate: float, k: int) -> float:
  """Returns `P(Binomial(n, rate) > k)`."""
  if rate >= 1.0:
    return float(k < n)
  total = 0.0
  for j in range(k + 1, n + 1):
    log_pmf = (
      math.lgamma(n + 1)
      - math.lgamma(j + 1)
      - math.lgamma(n - j + 1)
      + j * math.log(rate)
      + (n - j) * math.log1p(-rate)
    )
    total += math.exp(log_pmf)
  return min(total, 1.0)


def _warn_if_poisson_truncates(cohort: fedavg_lib.CohortConfig, n: int):
  """Logs the chance that a Poisson draw overflows the cohort's slots."""
  if cohort.sampling != "poisson" or cohort.clients_per_round >= n:
    return
  overflow = _binomial_tail(n, cohort.poisson_rate, cohort.clients_per_round)
  logging.warning(
    "Poisson cohorts have %d slots for %d clients at rate %g: a draw "
    "overflows them with probability %.3g per round, and the extra clients "
    "are dropped, which a Poisson accountant does not model. Use "
    "clients_per_round=%d for exact Poisson sampling.",
    cohort.clients_per_round,
    n,
    cohort.poisson_rate,
    overflow,
    n,
  )


def privacy_pieces(
  config: ml_collections.ConfigDict,
  model: Model,
  data: FederatedData,
  cohort: fedavg_lib.CohortConfig,
) -> tuple[Aggregator | None, dp_sgd.DPSGDConfig | None]:
  """Returns the DP aggregator and DP-SGD settings that `config` requests.

  Returns:
    `(aggregator, dp_sgd_config)`: both None for mode "none", the DP-FedAvg
    aggregator for "client", DP-SGD settings for "example".

  Raises:
    ValueError: For an unknown mode, a non-positive clip norm, a negative
      noise multiplier, example weighting or SCAFFOLD under client-level
      DP, adaptive clipping under example-level DP, or a model with
      non-trainable state.
  """
  privacy = config.get("privacy", None)
  mode = "none" if privacy is None else privacy.get("mode", "none")
  if mode not in PRIVACY_MODES:
    raise ValueError(
      f"privacy.mode={mode!r} is unknown; use one of {PRIVACY_MODES}."
    )
  use_secagg = privacy is not None and privacy.get("secure_aggregation", False)
  if mode == "none" and not use_secagg:
    return None, None

  clip_norm = privacy.get("clip_norm", 1.0)
  noise_multiplier = privacy.get("noise_multiplier", 1.0)
  for field, value in (
    ("clip_norm", clip_norm),
    ("noise_multiplier", noise_multiplier),
  ):
    if not isinstance(value, (int, float)):
      raise ValueError(f"privacy.{field}={value!r} must be a number.")
  if not clip_norm > 0:
    raise ValueError(
      f"privacy.clip_norm={clip_norm} must be positive; pass e.g. "
      "--config.privacy.clip_norm=1.0."
    )
  if not noise_multiplier >= 0:
    raise ValueError(
      f"privacy.noise_multiplier={noise_multiplier} must be non-negative; "
      "pass e.g. --config.privacy.noise_multiplier=1.0, or set "
      "privacy.target_epsilon to calibrate it."
    )
  if use_secagg:
    _check_secure_aggregation(config, cohort)
  if mode == "none":
    return _secure_aggregator(config, data, cohort, noise_multiplier=0.0), None

  state_names = _model_state_names(model, data)
  if state_names:
    raise ValueError(
      f"privacy.mode={mode!r} cannot privatize the model's non-trainable "
      f"state {state_names} (normalization statistics are averaged without "
      "clipping or noise); choose a model without batch normalization."
    )
  adaptive = privacy.get("adaptive_clipping", False)

  if mode == "example":
    if adaptive:
      raise ValueError(
        "privacy.adaptive_clipping=True is implemented for "
        "privacy.mode='client' only; set it to False for DP-SGD."
      )
    capacity = privacy.get("poisson_batch_capacity", 0) or None
    aggregator = None
    if use_secagg:
      aggregator = _secure_aggregator(
        config, data, cohort, noise_multiplier=0.0
      )
    return aggregator, dp_sgd.DPSGDConfig(
      clip_norm=float(clip_norm),
      noise_multiplier=float(noise_multiplier),
      batch_sampling=privacy.get("batch_sampling", "poisson"),
      poisson_capacity=capacity,
    )

  if config.algorithm.name == "scaffold":
    raise ValueError(
      "privacy.mode='client' does not support algorithm.name='scaffold': "
      "its control variates would reach the server without clipping or "
      "noise. Use fedavg, fedprox or a FedOpt method, or "
      "privacy.mode='example'."
    )
  if cohort.weighting != "uniform":
    raise ValueError(
      f"cohort.weighting={cohort.weighting!r} makes a client's influence "
      "depend on its num_examples, which client-level DP must bound; pass "
      "--config.cohort.weighting=uniform with privacy.mode='client'."
    )
  _warn_if_poisson_truncates(cohort, data.num_clients)
  if use_secagg:
    if adaptive:
      raise ValueError(
        "privacy.adaptive_clipping=True is not supported with "
        "privacy.secure_aggregation=True (the clip norm update would need "
        "its own secure sum); set one of them to False."
      )
    # Distributed DP: every client adds its share of the noise before
    # masking, so the server never sees an un-noised sum.
    aggregator = _secure_aggregator(
      config, data, cohort, noise_multiplier=float(noise_multiplier)
    )
    return aggregator, None
  expected_size = dp_aggregation.expected_cohort_size(
    cohort.sampling,
    data.num_clients,
    cohort.clients_per_round,
    cohort.poisson_rate,
  )
  adaptive_config = None
  if adaptive:
    adaptive_config = dp_aggregation.AdaptiveClipConfig(
      target_unclipped_quantile=privacy.get("target_unclipped_quantile", 0.5),
      clip_learning_rate=privacy.get("clip_learning_rate", 0.2),
      clipped_count_stddev=privacy.get("clipped_count_stddev", 0.0) or None,
    )
  aggregator = dp_aggregation.dp_fedavg_aggregator(
    float(clip_norm),
    float(noise_multiplier),
    expected_size,
    adaptive=adaptive_config,
  )
  return aggregator, None


def _check_secure_aggregation(config, cohort) -> None:
  if cohort.weighting != "uniform":
    raise ValueError(
      f"cohort.weighting={cohort.weighting!r} with "
      "privacy.secure_aggregation=True: the secure sum gives every client "
      "weight 1; pass --config.cohort.weighting=uniform."
    )
  if config.algorithm.name == "scaffold":
    raise ValueError(
      "privacy.secure_aggregation=True does not support "
      "algorithm.name='scaffold': its control variates would reach the "
      "server outside the secure sum."
    )


def _secure_aggregator(config, data, cohort, *, noise_multiplier: float):
  """Builds the secure aggregator (X25519 key exchange runs here)."""
  privacy = config.privacy
  expected_size = dp_aggregation.expected_cohort_size(
    cohort.sampling,
    data.num_clients,
    cohort.clients_per_round,
    cohort.poisson_rate,
  )
  return secure_aggregation.secure_aggregator(
    data.num_clients,
    cohort.clients_per_round,
    expected_size,
    clip_norm=float(privacy.get("clip_norm", 1.0)),
    ring_bits=int(privacy.get("secagg_bits", 32)),
    threshold=privacy.get("secagg_threshold", 0) or None,
    dropout_rate=float(privacy.get("secagg_dropout_rate", 0.0)),
    noise_multiplier=noise_multiplier,
    dropout_seed=int(config.seed),
  )


def build_algorithm(
  config: ml_collections.ConfigDict, model: Model, data: FederatedData
) -> FederatedAlgorithm:
  """Returns the configured algorithm for `data`'s population of clients.

  Raises:
    ValueError: For an unknown algorithm name, a non-positive learning rate,
      a cohort the population cannot supply, or invalid privacy settings
      (see `privacy_pieces`).
  """
  name = config.algorithm.name
  if name not in ALGORITHM_NAMES:
    raise ValueError(
      f"algorithm.name={name!r} is unknown; use one of {ALGORITHM_NAMES}, "
      "or 'pooled' / 'local' for the baselines."
    )
  cohort_section = config.cohort
  cohort = fedavg_lib.CohortConfig(
    clients_per_round=cohort_section.clients_per_round,
    sampling=cohort_section.sampling,
    poisson_rate=cohort_section.get("poisson_rate") or None,
    clients_per_chunk=cohort_section.get("clients_per_chunk") or None,
    weighting=cohort_section.weighting,
  )
  aggregator, dp_sgd_config = privacy_pieces(config, model, data, cohort)
  client = fedavg_lib.ClientConfig(
    learning_rate=make_schedule(config.client, config.num_rounds, "client"),
    num_local_steps=config.client.num_local_steps,
    batch_size=config.client.batch_size,
    optimizer=config.client.optimizer,
    momentum=config.client.get("momentum", 0.9),
    loss_fn=make_client_loss(config, data),
    dp_sgd=dp_sgd_config,
  )
  server_lr = make_schedule(config.server, config.num_rounds, "server")
  common = dict(client=client, cohort=cohort, dataset_name=data.name)

  if name == "fedavg":
    return fedavg_lib.fedavg(
      model,
      data.num_clients,
      server_learning_rate=server_lr,
      aggregator=aggregator,
      **common,
    )
  if name == "fedprox":
    return fedprox.fedprox(
      model,
      data.num_clients,
      mu=config.algorithm.mu,
      server_learning_rate=server_lr,
      aggregator=aggregator,
      **common,
    )
  if name == "fedtail":
    return fedtail.fedtail(
      model,
      data.num_clients,
      class_counts=global_class_counts(data.train, data.num_classes),
      config=fedtail_config(config),
      server_learning_rate=server_lr,
      aggregator=aggregator,
      **common,
    )
  if name == "scaffold":
    return scaffold.scaffold(
      model, data.num_clients, server_learning_rate=server_lr, **common
    )
  return fedopt.fedopt(
    model,
    data.num_clients,
    server_optimizer_name=_FEDOPT_SERVER[name],
    server_learning_rate=server_lr,
    momentum=config.server.get("momentum", 0.9),
    b1=config.server.get("b1", 0.9),
    b2=config.server.get("b2", 0.99),
    tau=config.server.get("tau", 1e-3),
    aggregator=aggregator,
    **common,
  )
