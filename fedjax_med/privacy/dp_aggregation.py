"""Client-level differential privacy: the DP-FedAvg aggregator.

References:
  * H. B. McMahan, D. Ramage, K. Talwar, L. Zhang, "Learning Differentially
    Private Recurrent Language Models", ICLR 2018, arXiv:1710.06963
    (DP-FedAvg).
  * G. Andrew, O. Thakkar, H. B. McMahan, S. Ramaswamy, "Differentially
    Private Learning with Adaptive Clipping", NeurIPS 2021,
    arXiv:1905.03871 (adaptive clipping).

One round, for a cohort drawn with expected size `m` (a public constant):

  1. Each sampled client clips its delta to L2 norm `C` (flat clipping over
     all leaves) and counts with weight 1, whatever its `num_examples`.
  2. The server sums the clipped deltas, adds `N(0, (z_delta * C)^2)` once
     to the sum (one key per leaf), and divides by `m`, never by the
     realised cohort size. An empty cohort therefore gives a noise-only
     update and the server still steps, so the output does not reveal
     whether anyone took part.

With fixed clipping `z_delta` is the configured noise multiplier `z`.

Adaptive clipping keeps `C` in the aggregator state and moves it toward the
`gamma` quantile of the clients' delta norms. Each client also reports the
bit `b = 1[||delta|| <= C]`, shifted to `b - 1/2` so that one client moves
the sum by at most 1/2. The server adds `N(0, sigma_b^2)` to the sum of the
shifted bits, estimates the unclipped fraction `b_hat = sum / m + 1/2`
(clamped to [0, 1]), and updates `C <- C * exp(-eta_C * (b_hat - gamma))`,
the geometric update. The count and the deltas are released together, a
Gaussian mechanism whose combined multiplier is
`(z_delta^-2 + (2 sigma_b)^-2)^(-1/2)`. To keep that equal to the
configured `z`, the deltas get the larger multiplier

  z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2),

which requires `sigma_b > z / 2`. The default `sigma_b` is
`max(m / 20, z)`: `m / 20` is the paper's choice, and the floor `z` keeps
small cohorts valid at a cost of at most 16% more noise on the deltas
(`z_delta <= z / sqrt(3/4)`). With `z = 0` nothing is noised.

Choices this implementation makes:
  * Deltas are weighted uniformly. Weighting by `num_examples` would make a
    client's influence, and so the sensitivity, depend on its data.
  * The noise multiplier is relative to `C` under add/remove adjacency of
    clients. An accountant must be given `z`, under fixed and adaptive
    clipping alike, and the sampling of the cohort.
  * The metric `clipped_fraction` is computed from the exact, un-noised
    count, like the round's `train_loss`. Both are diagnostics of the
    simulation, not privatized releases.
  * Non-trainable model state (batch normalization statistics) is averaged
    by the round outside the aggregator, without clipping or noise, so
    `fedjax_med.algorithms.registry.build_algorithm` rejects such models
    under client-level DP.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from optax import tree_utils as otu

from fedjax_med.core.aggregation import Aggregator, Finalized
from fedjax_med.privacy import clipping


class AdaptiveClipConfig(NamedTuple):
  """Settings of quantile-based adaptive clipping.

  Attributes:
    target_unclipped_quantile: `gamma`, the fraction of clients whose delta
      should fall under the clip norm, in [0, 1].
    clip_learning_rate: `eta_C` of the geometric update.
    clipped_count_stddev: `sigma_b`, the noise on the count of unclipped
      clients; None picks `max(expected_cohort_size / 20,
      noise_multiplier)`.
  """

  target_unclipped_quantile: float = 0.5
  clip_learning_rate: float = 0.2
  clipped_count_stddev: float | None = None


class DPAggregatorState(NamedTuple):
  """State of the DP-FedAvg aggregator.

  Attributes:
    clip_norm: The clip norm `C` used in the next round (float32 scalar);
      constant under fixed clipping.
  """

  clip_norm: jax.Array


def expected_cohort_size(
  sampling: str,
  num_clients: int,
  clients_per_round: int,
  poisson_rate: float | None,
) -> float:
  """Returns the public expected cohort size `m` for the sampling method.

  It is `poisson_rate * num_clients` for "poisson" and `clients_per_round`
  for "uniform" sampling without replacement.
  """
  if sampling == "poisson":
    if poisson_rate is None or not 0.0 < poisson_rate <= 1.0:
      raise ValueError(
        f"poisson_rate={poisson_rate} must be in (0, 1] for sampling='poisson'."
      )
    return float(poisson_rate) * num_clients
  if sampling == "uniform":
    return float(clients_per_round)
  raise ValueError(
    f"sampling={sampling!r} is unknown; use 'uniform' or 'poisson'."
  )


def default_clipped_count_stddev(
  noise_multiplier: float, expected_size: float
) -> float:
  """Returns `max(m / 20, z)`, or 0 when `z = 0` (no noise at all)."""
  if noise_multiplier == 0:
    return 0.0
  return max(expected_size / 20.0, noise_multiplier)


def delta_noise_multiplier(
  noise_multiplier: float, clipped_count_stddev: float
) -> float:
  """Returns `z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)`.

  The deltas noised with `z_delta` and the count noised with `sigma_b`
  together form a Gaussian mechanism with multiplier `z`.

  Raises:
    ValueError: If `sigma_b <= z / 2`, where no `z_delta` can reach `z`.
  """
  if noise_multiplier == 0:
    return 0.0
  if not 2.0 * clipped_count_stddev > noise_multiplier:
    raise ValueError(
      f"clipped_count_stddev={clipped_count_stddev} is too small for "
      f"noise_multiplier={noise_multiplier}: adaptive clipping needs "
      f"clipped_count_stddev > noise_multiplier / 2 = "
      f"{noise_multiplier / 2}; raise it, or leave it unset for the "
      "default max(expected_cohort_size / 20, noise_multiplier)."
    )
  inverse_square = noise_multiplier**-2 - (2.0 * clipped_count_stddev) ** -2
  return inverse_square**-0.5


def _validate_adaptive(adaptive: AdaptiveClipConfig) -> None:
  gamma = adaptive.target_unclipped_quantile
  if not 0.0 <= gamma <= 1.0:
    raise ValueError(
      f"target_unclipped_quantile={gamma} must be in [0, 1]; the paper's "
      "default is 0.5."
    )
  if not adaptive.clip_learning_rate > 0:
    raise ValueError(
      f"clip_learning_rate={adaptive.clip_learning_rate} must be positive; "
      "the paper's default is 0.2."
    )
  stddev = adaptive.clipped_count_stddev
  if stddev is not None and not stddev >= 0:
    raise ValueError(
      f"clipped_count_stddev={stddev} must be non-negative, or None for "
      "the default."
    )


def dp_fedavg_aggregator(
  clip_norm: float,
  noise_multiplier: float,
  expected_cohort_size: float,
  adaptive: AdaptiveClipConfig | None = None,
) -> Aggregator:
  """Builds the DP-FedAvg aggregator, with fixed or adaptive clipping.

  Args:
    clip_norm: The clip norm `C`; under adaptive clipping, its initial
      value.
    noise_multiplier: `z`, relative to `C`. The noise on the sum of clipped
      deltas has standard deviation `z * C` under fixed clipping and
      `z_delta * C` under adaptive clipping (see the module docstring).
    expected_cohort_size: `m`, the public denominator (`poisson_rate *
      num_clients` for Poisson sampling, `clients_per_round` for uniform
      sampling).
    adaptive: Adaptive clipping settings, or None for a fixed clip norm.

  Returns:
    An `Aggregator` whose `finalize` always applies the update. Its metrics
    are `clip_norm` (the norm used this round), `clipped_fraction` (exact,
    not privatized), `noise_stddev` (standard deviation of the noise on the
    sum of deltas) and, under adaptive clipping, `unclipped_fraction_estimate`
    (the noised `b_hat`).

  Raises:
    ValueError: For a non-positive clip norm or expected cohort size, a
      negative noise multiplier, or adaptive settings out of range.
  """
  clipping.validate_dp_settings(clip_norm, noise_multiplier)
  if not expected_cohort_size > 0:
    raise ValueError(
      f"expected_cohort_size={expected_cohort_size} must be positive; use "
      "poisson_rate * num_clients or clients_per_round."
    )
  count_stddev = 0.0
  z_delta = noise_multiplier
  if adaptive is not None:
    _validate_adaptive(adaptive)
    count_stddev = adaptive.clipped_count_stddev
    if count_stddev is None:
      count_stddev = default_clipped_count_stddev(
        noise_multiplier, expected_cohort_size
      )
    z_delta = delta_noise_multiplier(noise_multiplier, count_stddev)
  inverse_size = 1.0 / expected_cohort_size

  def init(params):
    del params
    return DPAggregatorState(jnp.asarray(clip_norm, jnp.float32))

  def postprocess(delta, weight, state, key, *, client_id, cohort):
    # Every client counts once, and clipping is deterministic.
    del weight, key, client_id, cohort
    clipped, norm = clipping.clip_by_global_norm(delta, state.clip_norm)
    unclipped = (norm <= state.clip_norm).astype(jnp.float32)
    extra = {"unclipped_centered": unclipped - 0.5, "clipped": 1.0 - unclipped}
    return clipped, jnp.ones((), jnp.float32), extra

  def finalize(weighted_sum, weight_sum, extra_sum, cohort_size, state, key):
    del cohort_size
    delta_key, count_key = jax.random.split(key)
    current = state.clip_norm

    # Noise the sum once, then divide by the public expected cohort size.
    sum_stddev = z_delta * current
    noisy_sum = clipping.add_gaussian_noise(weighted_sum, sum_stddev, delta_key)
    mean_delta = otu.tree_scale(inverse_size, noisy_sum)

    metrics = {
      "clip_norm": current,
      "clipped_fraction": extra_sum["clipped"] / jnp.maximum(weight_sum, 1.0),
      "noise_stddev": sum_stddev,
    }
    new_state = state
    if adaptive is not None:
      noisy_count = extra_sum["unclipped_centered"] + (
        count_stddev * jax.random.normal(count_key)
      )
      estimate = jnp.clip(noisy_count * inverse_size + 0.5, 0.0, 1.0)
      step = adaptive.clip_learning_rate * (
        estimate - adaptive.target_unclipped_quantile
      )
      new_state = DPAggregatorState(current * jnp.exp(-step))
      metrics["unclipped_fraction_estimate"] = estimate
    return Finalized(mean_delta, jnp.asarray(True), new_state, metrics)

  return Aggregator(init, postprocess, finalize)
