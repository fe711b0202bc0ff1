"""Tests of the privacy accountant against dp_accounting and closed forms."""

import json
import logging
import math

import dp_accounting
import pytest
from scipy import optimize, stats

from fedjax_med.privacy.accounting import (
  PrivacyAccountant,
  PrivacySpec,
  compute_epsilon,
  make_dp_event,
)

RELATION = dp_accounting.NeighboringRelation


def _rdp(event, relation=RELATION.ADD_OR_REMOVE_ONE, delta=1e-5):
  accountant = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
  return accountant.compose(event).get_epsilon(delta)


def _pld(event, relation=RELATION.ADD_OR_REMOVE_ONE, delta=1e-5):
  accountant = dp_accounting.pld.PLDAccountant(
    relation, value_discretization_interval=1e-4
  )
  return accountant.compose(event).get_epsilon(delta)


def _analytic_gaussian_epsilon(multiplier, delta):
  """Exact epsilon of one Gaussian mechanism with std/sensitivity `multiplier`.

  The analytic Gaussian mechanism of Balle and Wang (ICML 2018,
  arXiv:1805.06530):
  delta(eps) = Phi(1/(2m) - eps m) - exp(eps) Phi(-1/(2m) - eps m).
  """

  def delta_at(eps):
    m = multiplier
    return stats.norm.cdf(1 / (2 * m) - eps * m) - math.exp(eps) * (
      stats.norm.cdf(-1 / (2 * m) - eps * m)
    )

  return optimize.brentq(lambda eps: delta_at(eps) - delta, 0.0, 500.0)


def test_poisson_add_remove_known_value():
  spec = PrivacySpec(1.1, "poisson", sampling_probability=0.01)
  assert compute_epsilon(spec, 1000, 1e-5) == pytest.approx(1.712, abs=5e-4)


def test_fixed_size_replace_one_known_value():
  # Batches of 600 out of 60,000, noise std 1.1 C: the sum moves by 2C under
  # replace-one, so the value is 15.566, not the 3.190 of sensitivity C.
  spec = PrivacySpec(
    1.1,
    "fixed_size",
    sample_size=600,
    population_size=60_000,
    adjacency="replace_one",
  )
  epsilon = compute_epsilon(spec, 1000, 1e-5)
  assert epsilon == pytest.approx(15.566, abs=5e-4)
  assert abs(epsilon - 3.190) > 10


@pytest.mark.parametrize(
  "spec, event, relation, reference",
  [
    (
      PrivacySpec(0.9, "poisson", sampling_probability=0.05),
      dp_accounting.PoissonSampledDpEvent(
        0.05, dp_accounting.GaussianDpEvent(0.9)
      ),
      RELATION.ADD_OR_REMOVE_ONE,
      _rdp,
    ),
    (
      PrivacySpec(
        1.3,
        "fixed_size",
        sample_size=32,
        population_size=1000,
        adjacency="replace_one",
      ),
      dp_accounting.SampledWithoutReplacementDpEvent(
        1000, 32, dp_accounting.GaussianDpEvent(0.65)
      ),
      RELATION.REPLACE_ONE,
      _rdp,
    ),
    (
      PrivacySpec(1.5, "poisson", sampling_probability=0.2, accountant="pld"),
      dp_accounting.PoissonSampledDpEvent(
        0.2, dp_accounting.GaussianDpEvent(1.5)
      ),
      RELATION.ADD_OR_REMOVE_ONE,
      _pld,
    ),
    (
      PrivacySpec(
        1.2,
        "poisson",
        sampling_probability=0.1,
        adjacency="replace_one",
        accountant="pld",
      ),
      dp_accounting.PoissonSampledDpEvent(
        0.1, dp_accounting.GaussianDpEvent(1.2)
      ),
      RELATION.REPLACE_ONE,
      _pld,
    ),
  ],
  ids=["rdp_poisson", "rdp_fixed_replace", "pld_poisson", "pld_replace"],
)
def test_matches_dp_accounting(spec, event, relation, reference):
  expected = reference(dp_accounting.SelfComposedDpEvent(event, 40), relation)
  assert compute_epsilon(spec, 40, 1e-5) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("adjacency", ["add_remove", "replace_one"])
@pytest.mark.parametrize(
  "noise_multiplier, num_steps", [(1.0, 1), (2.0, 1), (3.0, 4)]
)
@pytest.mark.parametrize("sampling", ["poisson", "fixed_size"])
def test_unsampled_gaussian_closed_form(
  adjacency, noise_multiplier, num_steps, sampling
):
  # T Gaussian steps compose to one Gaussian with multiplier z / sqrt(T);
  # replace-one doubles the sensitivity.
  sensitivity = 2.0 if adjacency == "replace_one" else 1.0
  multiplier = noise_multiplier / (sensitivity * math.sqrt(num_steps))
  exact = _analytic_gaussian_epsilon(multiplier, 1e-5)
  full = dict(sampling_probability=1.0)
  if sampling == "fixed_size":
    full = dict(sample_size=50, population_size=50)
  common = dict(sampling=sampling, adjacency=adjacency, **full)

  pld = PrivacySpec(noise_multiplier, accountant="pld", **common)
  rdp = PrivacySpec(noise_multiplier, accountant="rdp", **common)
  assert compute_epsilon(pld, num_steps, 1e-5) == pytest.approx(exact, abs=1e-3)
  assert compute_epsilon(rdp, num_steps, 1e-5) >= exact


def test_fixed_size_is_not_accounted_as_poisson():
  # 6 of 20 units: the inclusion rate is 0.3 either way, but a fixed-size
  # sampler needs the sampling-without-replacement analysis.
  fixed = PrivacySpec(
    1.0,
    "fixed_size",
    sample_size=6,
    population_size=20,
    adjacency="replace_one",
  )
  event = make_dp_event(fixed, 10)
  assert isinstance(event.event, dp_accounting.SampledWithoutReplacementDpEvent)
  assert event.event.sample_size == 6
  assert event.event.source_dataset_size == 20
  as_poisson = _rdp(
    dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(
        0.3, dp_accounting.GaussianDpEvent(0.5)
      ),
      10,
    )
  )
  epsilon = compute_epsilon(fixed, 10, 1e-5)
  assert abs(epsilon - as_poisson) > 0.1
  assert fixed.sampling_rate == pytest.approx(0.3)


def test_truncated_poisson_uses_truncated_event():
  plain = PrivacySpec(
    1.1, "poisson", sampling_probability=0.2, accountant="pld"
  )
  uncapped = plain.replace(population_size=40, max_sample_size=40)
  capped = plain.replace(population_size=40, max_sample_size=10)
  assert not uncapped.truncated
  assert capped.truncated
  event = make_dp_event(capped, 2).event
  assert isinstance(event, dp_accounting.TruncatedSubsampledGaussianDpEvent)
  assert compute_epsilon(uncapped, 2, 1e-5) == compute_epsilon(plain, 2, 1e-5)
  assert compute_epsilon(capped, 2, 1e-5) > compute_epsilon(plain, 2, 1e-5)


@pytest.mark.parametrize(
  "fields, message",
  [
    (
      dict(sampling_probability=0.1, adjacency="replace_one"),
      "Poisson sampling under adjacency='replace_one'",
    ),
    (
      dict(sampling="fixed_size", sample_size=5, population_size=50),
      "analysed only under adjacency='replace_one'",
    ),
    (
      dict(
        sampling="fixed_size",
        sample_size=5,
        population_size=50,
        adjacency="replace_one",
        accountant="pld",
      ),
      "not supported by dp_accounting's PLD accountant",
    ),
    (
      dict(sampling_probability=0.1, population_size=50, max_sample_size=5),
      "truncated Poisson sampling",
    ),
  ],
)
def test_unsupported_combination_raises(fields, message):
  spec = PrivacySpec(1.0, **fields)
  with pytest.raises(ValueError, match=message):
    compute_epsilon(spec, 3, 1e-5)


@pytest.mark.parametrize(
  "fields, message",
  [
    (dict(noise_multiplier=0.0, sampling_probability=0.1), "noise_multipl"),
    (dict(noise_multiplier=-1.0, sampling_probability=0.1), "noise_multipl"),
    (dict(noise_multiplier=1.0, sampling_probability=0.0), "in \\(0, 1\\]"),
    (dict(noise_multiplier=1.0, sampling_probability=1.5), "in \\(0, 1\\]"),
    (
      dict(
        noise_multiplier=1.0,
        sampling="fixed_size",
        sample_size=60,
        population_size=50,
      ),
      "sample_size=60",
    ),
    (dict(noise_multiplier=1.0, sampling="shuffle"), "sampling='shuffle'"),
    (
      dict(noise_multiplier=1.0, sampling_probability=0.1, adjacency="x"),
      "adjacency='x'",
    ),
  ],
)
def test_invalid_spec_raises(fields, message):
  with pytest.raises(ValueError, match=message):
    PrivacySpec(**fields)


@pytest.mark.parametrize("delta", [0.0, 1.0, 1.5, -1e-5])
def test_invalid_delta_raises(delta):
  spec = PrivacySpec(1.0, sampling_probability=0.1)
  with pytest.raises(ValueError, match=f"delta={delta}"):
    compute_epsilon(spec, 10, delta)


def test_accountant_resumed_equals_straight():
  specs = {
    "a": PrivacySpec(1.1, sampling_probability=0.3, steps_per_round=5),
    "b": PrivacySpec(1.1, sampling_probability=0.6, steps_per_round=5),
  }
  straight = PrivacyAccountant(specs, 1e-5)
  for _ in range(6):
    straight.step()

  first = PrivacyAccountant(specs, 1e-5)
  first.step(3)
  saved = json.loads(json.dumps(first.state_dict()))
  resumed = PrivacyAccountant.from_state_dict(saved)
  assert resumed.num_rounds == 3
  assert resumed.epsilons() == first.epsilons()
  resumed.step(3)
  assert resumed.epsilons() == straight.epsilons()
  assert resumed.epsilon() == straight.epsilon()
  assert straight.epsilon() == straight.epsilons()["b"]
  expected = compute_epsilon(specs["b"], 30, 1e-5)
  assert straight.epsilon() == expected


def test_accountant_looks_ahead_without_composing():
  accountant = PrivacyAccountant(
    PrivacySpec(1.0, sampling_probability=0.5), 1e-5
  )
  accountant.step(2)
  ahead = accountant.epsilon(num_rounds=3)
  assert accountant.num_rounds == 2
  assert accountant.epsilon() < ahead
  accountant.step()
  assert accountant.epsilon() == ahead
  assert accountant.epsilon(num_rounds=0) == 0.0


def test_excluded_order_warnings_are_summarized(caplog):
  # q around 0.5 with a large multiplier makes dp_accounting 0.6.0 warn
  # once per fractional order below 2.
  spec = PrivacySpec(3.183, sampling_probability=16 / 30, steps_per_round=10)
  with caplog.at_level(logging.WARNING):
    epsilon = compute_epsilon(spec, 40, 1e-3)
  assert math.isfinite(epsilon)
  assert not [r for r in caplog.records if "failed to converge" in r.message]
