"""Privacy accounting of the Gaussian mechanism as the rounds run it.

Host-side wrappers over the `dp_accounting` package (version 0.6.0): a
`PrivacySpec` describes the mechanism, `compute_epsilon` composes it, and
`PrivacyAccountant` tracks a run one round at a time. `calibration.py` turns
a target epsilon into a noise multiplier.

Conventions:
  * The unit of privacy is a client for client-level DP (DP-FedAvg) and one
    training record for example-level DP (DP-SGD inside each client).
  * `noise_multiplier` z is the noise standard deviation divided by the clip
    norm C that bounds one unit's contribution to the noised sum.
  * Adjacency "add_remove": neighbouring datasets differ by one unit added or
    removed, so the sum moves by at most C. "replace_one": one unit is
    replaced by another, so the sum moves by at most 2C.
  * dp_accounting's RDP accountant reads a `GaussianDpEvent`'s multiplier
    as the standard deviation over the L2 sensitivity under every
    neighbouring relation, so under replace-one it is given z / 2. Its PLD
    accountant under `REPLACE_ONE` already models the two-sided shift of C
    each way (2C in all) and is given z. Both then describe the same
    mechanism; the tests check this against the closed form of the Gaussian
    mechanism.
  * Sampling "poisson": every unit takes part in a step independently with
    probability q. "fixed_size": exactly b of the n units take part, drawn
    uniformly without replacement. A rate of 1 (q = 1, or b = n) means every
    unit takes part in every step, which is accounted as a composition of
    unsampled Gaussian mechanisms. A fixed-size sampler is never accounted as
    Poisson sampling at the rate b / n.
  * Truncated Poisson sampling ("poisson" with `max_sample_size` below the
    population): a draw of more than `max_sample_size` units keeps a uniform
    random subset of that size. It is accounted with dp_accounting's
    `TruncatedSubsampledGaussianDpEvent`, which only the PLD accountant
    supports.

Supported combinations (anything else raises a ValueError that names it):

  | accountant | adjacency   | poisson | fixed_size (b < n) |
  |------------|-------------|---------|--------------------|
  | rdp        | add_remove  | yes     | no                 |
  | rdp        | replace_one | no      | yes                |
  | pld        | add_remove  | yes     | no                 |
  | pld        | replace_one | yes     | no                 |

dp_accounting analyses sampling without replacement only under replace-one
and only in its RDP accountant; its RDP accountant rejects Poisson sampling
under replace-one. Truncated Poisson sampling needs "pld".

"rdp" is `dp_accounting.rdp.RdpAccountant` with its default orders; "pld" is
`dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging as std_logging
from collections.abc import Iterator, Mapping
from typing import Any

import dp_accounting
from absl import logging

SAMPLINGS = ("poisson", "fixed_size")
ADJACENCIES = ("add_remove", "replace_one")
ACCOUNTANTS = ("rdp", "pld")
PLD_VALUE_DISCRETIZATION = 1e-4

_RELATIONS = {
  "add_remove": dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
  "replace_one": dp_accounting.NeighboringRelation.REPLACE_ONE,
}


@dataclasses.dataclass(frozen=True)
class PrivacySpec:
  """The sampled Gaussian mechanism that one group of units goes through.

  Attributes:
    noise_multiplier: Noise standard deviation over the clip norm of one
      unit; None in a spec that `calibrate_noise_multiplier` fills in.
    sampling: "poisson" or "fixed_size".
    sampling_probability: q in (0, 1] for "poisson".
    sample_size: Units per step b for "fixed_size".
    population_size: Units to draw from n; required for "fixed_size" and
      for truncated Poisson sampling.
    max_sample_size: For "poisson", the most units a step keeps (a larger
      draw keeps a uniform random subset of this size); None for no cap.
    steps_per_round: Noised releases per round (1 for client-level DP, the
      local steps for DP-SGD).
    num_rounds: Rounds the run plans; calibration spends the budget over
      `num_rounds * steps_per_round` steps.
    adjacency: "add_remove" or "replace_one".
    accountant: "rdp" or "pld".
    one_time_noise_multipliers: Noise multipliers of unsampled Gaussian
      mechanisms that every unit goes through once per run, on top of the
      steps (FedHypeVAE's release of class statistics). Each is relative
      to that release's own L2 sensitivity, and their events are composed
      with the steps' whenever epsilon is computed.
  """

  noise_multiplier: float | None
  sampling: str = "poisson"
  sampling_probability: float | None = None
  sample_size: int | None = None
  population_size: int | None = None
  max_sample_size: int | None = None
  steps_per_round: int = 1
  num_rounds: int = 1
  adjacency: str = "add_remove"
  accountant: str = "rdp"
  one_time_noise_multipliers: tuple[float, ...] = ()

  def __post_init__(self):
    # A JSON round trip turns the tuple into a list; keep the spec hashable.
    releases = tuple(float(z) for z in self.one_time_noise_multipliers)
    object.__setattr__(self, "one_time_noise_multipliers", releases)
    for z in releases:
      _check_noise_multiplier(z)
    _check_choice("sampling", self.sampling, SAMPLINGS)
    _check_choice("adjacency", self.adjacency, ADJACENCIES)
    _check_choice("accountant", self.accountant, ACCOUNTANTS)
    if self.noise_multiplier is not None:
      _check_noise_multiplier(self.noise_multiplier)
    if self.sampling == "poisson":
      q = self.sampling_probability
      if q is None or not 0.0 < q <= 1.0:
        raise ValueError(
          f"sampling_probability={q} must be in (0, 1] for Poisson "
          "sampling; set it to the expected fraction of units per step."
        )
      cap = self.max_sample_size
      if cap is not None and (cap < 1 or self.population_size is None):
        raise ValueError(
          f"max_sample_size={cap} must be a positive integer, with "
          "population_size set, for truncated Poisson sampling."
        )
    else:
      n, b = self.population_size, self.sample_size
      if n is None or n < 1:
        raise ValueError(
          f"population_size={n} must be a positive integer for "
          "fixed-size sampling."
        )
      if b is None or not 1 <= b <= n:
        raise ValueError(
          f"sample_size={b} must be in [1, {n}] (the population size) "
          "for fixed-size sampling."
        )
    if self.steps_per_round < 1:
      raise ValueError(
        f"steps_per_round={self.steps_per_round} must be at least 1."
      )
    if self.num_rounds < 0:
      raise ValueError(f"num_rounds={self.num_rounds} must not be negative.")

  @property
  def sampling_rate(self) -> float:
    """Probability that a given unit takes part in one step."""
    if self.sampling == "poisson":
      return float(self.sampling_probability)
    return self.sample_size / self.population_size

  @property
  def truncated(self) -> bool:
    """Whether a Poisson draw can exceed `max_sample_size`."""
    return (
      self.sampling == "poisson"
      and self.max_sample_size is not None
      and self.max_sample_size < self.population_size
      and self.sampling_probability < 1.0
    )

  @property
  def total_steps(self) -> int:
    """Steps composed over the planned rounds."""
    return self.num_rounds * self.steps_per_round

  def replace(self, **changes: Any) -> PrivacySpec:
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, fields: Mapping[str, Any]) -> PrivacySpec:
    return cls(**fields)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name}={value!r} is unknown; use one of {choices}.")


def _check_noise_multiplier(noise_multiplier: float) -> None:
  if not noise_multiplier > 0:
    raise ValueError(
      f"noise_multiplier={noise_multiplier} must be positive for a "
      "differential privacy guarantee; set it (e.g. 1.0) or set a "
      "target_epsilon to calibrate it."
    )


def validate_delta(delta: float) -> None:
  """Raises ValueError unless 0 < delta < 1."""
  if not 0.0 < delta < 1.0:
    raise ValueError(
      f"delta={delta} must be in (0, 1); use a value below one over the "
      "number of units, such as 1e-5."
    )


def make_dp_event(spec: PrivacySpec, num_steps: int) -> dp_accounting.DpEvent:
  """Builds the dp_accounting event of `num_steps` steps of `spec`.

  The event includes the spec's one-time releases, so it is not empty at
  `num_steps=0` when the spec has them.

  Raises:
    ValueError: For a missing or non-positive noise multiplier, or a
      combination of sampling, adjacency and accountant that dp_accounting
      cannot analyse (see the module docstring).
  """
  if spec.noise_multiplier is None:
    raise ValueError(
      "noise_multiplier=None cannot be accounted; set it or calibrate it "
      "with calibrate_noise_multiplier."
    )
  _check_noise_multiplier(spec.noise_multiplier)
  steps = _sampled_steps_event(spec, num_steps)
  if not spec.one_time_noise_multipliers:
    return steps
  replace_one = spec.adjacency == "replace_one" and spec.accountant == "rdp"
  releases = [
    # Under replace-one the RDP accountant reads the multiplier over 2C.
    dp_accounting.GaussianDpEvent(z / 2 if replace_one else z)
    for z in spec.one_time_noise_multipliers
  ]
  return dp_accounting.ComposedDpEvent([steps, *releases])


def _sampled_steps_event(spec: PrivacySpec, num_steps: int):
  replace_one = spec.adjacency == "replace_one"
  noise_multiplier = spec.noise_multiplier
  if replace_one and spec.accountant == "rdp":
    # Replace-one moves the sum by 2C; RDP reads the multiplier over that.
    noise_multiplier = noise_multiplier / 2
  gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)

  if spec.sampling_rate == 1.0 and not spec.truncated:
    event = gaussian
  elif spec.truncated:
    if spec.accountant != "pld":
      raise ValueError(
        f"truncated Poisson sampling (at most {spec.max_sample_size} of "
        f"{spec.population_size} units) is supported only by "
        "dp_accounting's PLD accountant; use accountant='pld' or remove "
        "the cap."
      )
    event = dp_accounting.TruncatedSubsampledGaussianDpEvent(
      spec.population_size,
      spec.sampling_probability,
      spec.max_sample_size,
      noise_multiplier,
    )
  elif spec.sampling == "poisson":
    if replace_one and spec.accountant == "rdp":
      raise ValueError(
        "Poisson sampling under adjacency='replace_one' is not supported "
        "by dp_accounting's RDP accountant; use accountant='pld' or "
        "adjacency='add_remove'."
      )
    event = dp_accounting.PoissonSampledDpEvent(
      spec.sampling_probability, gaussian
    )
  else:
    sampled = f"{spec.sample_size} of {spec.population_size} units"
    if spec.accountant == "pld":
      raise ValueError(
        f"fixed-size sampling ({sampled}) is not supported by "
        "dp_accounting's PLD accountant; use accountant='rdp' with "
        "adjacency='replace_one', or Poisson sampling."
      )
    if not replace_one:
      raise ValueError(
        f"fixed-size sampling ({sampled}) is analysed only under "
        "adjacency='replace_one'; set adjacency='replace_one' or use "
        "Poisson sampling."
      )
    event = dp_accounting.SampledWithoutReplacementDpEvent(
      spec.population_size, spec.sample_size, gaussian
    )
  return dp_accounting.SelfComposedDpEvent(event, num_steps)


def make_accountant(spec: PrivacySpec) -> dp_accounting.PrivacyAccountant:
  """Returns an empty dp_accounting accountant of the kind `spec` names."""
  relation = _RELATIONS[spec.adjacency]
  if spec.accountant == "rdp":
    return dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
  return dp_accounting.pld.PLDAccountant(
    relation, value_discretization_interval=PLD_VALUE_DISCRETIZATION
  )


class _ExcludedOrderFilter(std_logging.Filter):
  """Counts and drops dp_accounting's warnings about excluded RDP orders."""

  def __init__(self):
    super().__init__()
    self.count = 0

  def filter(self, record: std_logging.LogRecord) -> bool:
    if str(record.msg).startswith("_compute_log_a_frac failed to converge"):
      self.count += 1
      return False
    return True


@contextlib.contextmanager
def summarize_excluded_rdp_orders() -> Iterator[None]:
  """Replaces per-order warnings of the RDP accountant with one summary.

  For fractional orders below 2 and moderate sampling rates, dp_accounting
  0.6.0 warns once per order that its series failed to converge and leaves
  the order out. The minimum over the remaining orders is still a valid
  upper bound on epsilon, so one line per process is enough.
  """
  absl_logger = std_logging.getLogger("absl")
  excluded = _ExcludedOrderFilter()
  absl_logger.addFilter(excluded)
  try:
    yield
  finally:
    absl_logger.removeFilter(excluded)
  if excluded.count:
    logging.log_first_n(
      logging.INFO,
      "dp_accounting left out %d fractional RDP orders whose series did "
      "not converge; epsilon is the minimum over the other orders, still "
      "an upper bound.",
      1,
      excluded.count,
    )


@functools.lru_cache(maxsize=4096)
def _cached_epsilon(spec: PrivacySpec, num_steps: int, delta: float) -> float:
  accountant = make_accountant(spec)
  with summarize_excluded_rdp_orders():
    accountant.compose(make_dp_event(spec, num_steps))
  return float(accountant.get_epsilon(delta))


def compute_epsilon(spec: PrivacySpec, num_steps: int, delta: float) -> float:
  """Returns the epsilon at `delta` after `num_steps` steps of `spec`.

  The whole count is composed in one event, so the result depends only on
  the arguments (a restored run reports bit-identical values).
  """
  validate_delta(delta)
  if num_steps < 0:
    raise ValueError(f"num_steps={num_steps} must not be negative.")
  if num_steps == 0 and not spec.one_time_noise_multipliers:
    return 0.0
  return _cached_epsilon(spec, int(num_steps), float(delta))


def as_spec_mapping(
  specs: PrivacySpec | Mapping[str, PrivacySpec],
) -> dict[str, PrivacySpec]:
  """Returns `specs` as a dict from group name to spec ("all" for one)."""
  if isinstance(specs, PrivacySpec):
    return {"all": specs}
  return dict(specs)


class PrivacyAccountant:
  """The privacy spent by a run, composed one round at a time.

  Args:
    specs: One spec, or a mapping from a group name (a client, for
      example-level DP where each client has its own sampling rate) to its
      spec. A unit belongs to one group, so the run's epsilon is the maximum
      over groups.
    delta: Delta at which epsilon is reported.
    num_rounds: Rounds already composed.
  """

  def __init__(
    self,
    specs: PrivacySpec | Mapping[str, PrivacySpec],
    delta: float,
    num_rounds: int = 0,
  ):
    validate_delta(delta)
    self.specs = as_spec_mapping(specs)
    for spec in self.specs.values():
      if spec.noise_multiplier is None:
        raise ValueError(
          "noise_multiplier=None cannot be accounted; calibrate it first."
        )
    self.delta = float(delta)
    self.num_rounds = int(num_rounds)

  def step(self, num_rounds: int = 1) -> None:
    """Composes `num_rounds` more rounds."""
    if num_rounds < 0:
      raise ValueError(f"num_rounds={num_rounds} must not be negative.")
    self.num_rounds += num_rounds

  def epsilons(
    self, delta: float | None = None, num_rounds: int | None = None
  ) -> dict[str, float]:
    """Epsilon of each group after `num_rounds` (default: those composed)."""
    delta = self.delta if delta is None else delta
    rounds = self.num_rounds if num_rounds is None else num_rounds
    return {
      name: compute_epsilon(spec, rounds * spec.steps_per_round, delta)
      for name, spec in self.specs.items()
    }

  def epsilon(
    self, delta: float | None = None, num_rounds: int | None = None
  ) -> float:
    """Returns the run's epsilon, the maximum over groups (0.0 if none)."""
    return max(self.epsilons(delta, num_rounds).values(), default=0.0)

  def state_dict(self) -> dict[str, Any]:
    """Returns a JSON-serializable state that `from_state_dict` restores."""
    return {
      "delta": self.delta,
      "num_rounds": self.num_rounds,
      "specs": {name: spec.to_dict() for name, spec in self.specs.items()},
    }

  @classmethod
  def from_state_dict(cls, state: Mapping[str, Any]) -> PrivacyAccountant:
    specs = {
      name: PrivacySpec.from_dict(fields)
      for name, fields in state["specs"].items()
    }
    return cls(specs, state["delta"], state["num_rounds"])
