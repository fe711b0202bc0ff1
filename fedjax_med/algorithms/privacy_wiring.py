"""Turns `config.privacy` into the round's aggregator and DP-SGD settings.

`privacy_pieces` is called by `build_algorithm`:

  * mode "client": DP-FedAvg's aggregator (clip, one Gaussian draw on the
    sum, public denominator), or secure aggregation with each client's
    share of the noise when `privacy.secure_aggregation` is set.
  * mode "example": DP-SGD settings for every client's local training, and
    secure aggregation of the results when it is set.
  * mode "none": nothing, or secure aggregation alone.

Under client-level DP the public denominator is the expected cohort size,
`poisson_rate * num_clients` for "poisson" sampling or `clients_per_round`
for "uniform". Deltas count once each, so `cohort.weighting` must be
"uniform", and SCAFFOLD is rejected because its control variates would be
released without noise. `privacy.noise_multiplier` is used as given: a
caller that calibrates it from `privacy.target_epsilon` writes the
calibrated value into the config first. `privacy.poisson_batch_capacity`
(default 0, one slot per padded row) caps the slots of a DP-SGD Poisson
batch.
"""

from __future__ import annotations

import math

import jax
import ml_collections
from absl import logging

from fedjax_med.algorithms import fedavg as fedavg_lib
from fedjax_med.core.aggregation import Aggregator
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.models.base import Model
from fedjax_med.privacy import dp_aggregation, dp_sgd, secure_aggregation

PRIVACY_MODES = ("none", "client", "example")


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
