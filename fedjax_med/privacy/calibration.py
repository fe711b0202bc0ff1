"""Calibration of the noise multiplier to a target epsilon.

`calibrate_noise_multiplier` searches for the smallest noise multiplier whose
epsilon, as `compute_epsilon` accounts it, stays at or below a target. It
brackets that multiplier by doubling or halving from 1, then refines it with
`dp_accounting.calibrate_dp_mechanism` (Brent's method, with a bisection
fallback that returns a value on the private side of the target).
"""

from __future__ import annotations

from collections.abc import Mapping

import dp_accounting

from fedjax_med.privacy.accounting import (
  PrivacySpec,
  as_spec_mapping,
  compute_epsilon,
  make_accountant,
  make_dp_event,
  summarize_excluded_rdp_orders,
  validate_delta,
)


def _calibrate_one(
  target_epsilon: float,
  spec: PrivacySpec,
  num_steps: int,
  delta: float,
  min_noise_multiplier: float,
  max_noise_multiplier: float,
  tolerance: float,
) -> float:
  def epsilon_at(noise_multiplier: float) -> float:
    with_noise = spec.replace(noise_multiplier=noise_multiplier)
    return compute_epsilon(with_noise, num_steps, delta)

  highest = epsilon_at(max_noise_multiplier)
  if highest > target_epsilon:
    raise ValueError(
      f"target_epsilon={target_epsilon} is out of reach at delta={delta} "
      f"over {num_steps / spec.steps_per_round:g} rounds of "
      f"{spec.steps_per_round} steps: even "
      f"noise_multiplier={max_noise_multiplier} gives epsilon={highest:.4g}."
      " Raise target_epsilon, lower num_rounds, or lower the sampling "
      "rate (fewer units per step)."
    )

  # Bracket the smallest sufficient multiplier by doubling or halving from 1.
  upper = min(1.0, max_noise_multiplier)
  while epsilon_at(upper) > target_epsilon:
    upper = min(2 * upper, max_noise_multiplier)
  lower = upper / 2
  while lower > min_noise_multiplier and epsilon_at(lower) <= target_epsilon:
    upper, lower = lower, lower / 2
  if lower <= min_noise_multiplier:
    lower = min_noise_multiplier
    if epsilon_at(lower) <= target_epsilon:
      return lower

  with summarize_excluded_rdp_orders():
    noise_multiplier = dp_accounting.calibrate_dp_mechanism(
      lambda: make_accountant(spec),
      lambda z: make_dp_event(spec.replace(noise_multiplier=z), num_steps),
      target_epsilon,
      delta,
      bracket_interval=dp_accounting.ExplicitBracketInterval(lower, upper),
      tol=tolerance,
    )
  reached = epsilon_at(noise_multiplier)
  if reached > target_epsilon:
    raise RuntimeError(
      f"calibration returned noise_multiplier={noise_multiplier} with "
      f"epsilon={reached} above target_epsilon={target_epsilon}."
    )
  return float(noise_multiplier)


def calibrate_noise_multiplier(
  target_epsilon: float,
  specs: PrivacySpec | Mapping[str, PrivacySpec],
  delta: float,
  num_steps: int | None = None,
  *,
  min_noise_multiplier: float = 0.1,
  max_noise_multiplier: float = 1000.0,
  tolerance: float = 1e-6,
) -> float:
  """Returns the smallest noise multiplier that keeps every group in budget.

  Each spec's own `noise_multiplier` is ignored. For several groups (the
  clients of example-level DP, each with its own sampling rate) the answer
  is the largest of the per-group answers, because epsilon falls as the
  noise grows. The returned value never gives an epsilon above the target.
  It is within `tolerance` of the exact root, or `min_noise_multiplier` when
  even that meets the target.

  Args:
    target_epsilon: Budget at `delta`, positive.
    specs: One spec, or a mapping from a group name to its spec.
    delta: Target delta in (0, 1).
    num_steps: Steps to spend the budget over; by default each spec's
      `total_steps`.
    min_noise_multiplier: Lower end of the search.
    max_noise_multiplier: Upper end of the search.
    tolerance: Tolerance on the noise multiplier.

  Raises:
    ValueError: For a non-positive target, an invalid delta, or a target
      that even `max_noise_multiplier` cannot reach.
  """
  if not target_epsilon > 0:
    raise ValueError(
      f"target_epsilon={target_epsilon} must be positive; use e.g. 1.0."
    )
  validate_delta(delta)
  if not 0 < min_noise_multiplier < max_noise_multiplier:
    raise ValueError(
      f"min_noise_multiplier={min_noise_multiplier} and "
      f"max_noise_multiplier={max_noise_multiplier} must satisfy "
      "0 < min < max."
    )
  specs = as_spec_mapping(specs)
  if not specs:
    raise ValueError("specs is empty; pass at least one PrivacySpec.")
  results = {}
  for spec in specs.values():
    steps = spec.total_steps if num_steps is None else num_steps
    key = (spec.replace(noise_multiplier=None), steps)
    if key not in results:
      results[key] = _calibrate_one(
        target_epsilon,
        key[0],
        steps,
        delta,
        min_noise_multiplier,
        max_noise_multiplier,
        tolerance,
      )
  return max(results.values())
