"""Tests of noise calibration to a target epsilon."""

import pytest

from fedjax_med.privacy.accounting import PrivacySpec, compute_epsilon
from fedjax_med.privacy.calibration import calibrate_noise_multiplier


@pytest.mark.parametrize(
  "spec, num_steps, target",
  [
    (PrivacySpec(None, sampling_probability=0.01), 1000, 1.712),
    (PrivacySpec(None, sampling_probability=16 / 30), 200, 4.0),
    (
      PrivacySpec(
        None,
        "fixed_size",
        sample_size=600,
        population_size=60_000,
        adjacency="replace_one",
      ),
      1000,
      2.0,
    ),
    (PrivacySpec(None, sampling_probability=1.0), 50, 0.5),
    (
      PrivacySpec(None, sampling_probability=0.2, accountant="pld"),
      20,
      1.0,
    ),
  ],
  ids=["poisson_small_q", "poisson_large_q", "fixed_size", "full", "pld"],
)
def test_calibration_never_overshoots(spec, num_steps, target):
  delta = 1e-5
  noise_multiplier = calibrate_noise_multiplier(target, spec, delta, num_steps)
  calibrated = spec.replace(noise_multiplier=noise_multiplier)
  epsilon = compute_epsilon(calibrated, num_steps, delta)
  assert epsilon <= target
  assert epsilon >= target - 1e-3 * target
  slightly_less = spec.replace(noise_multiplier=noise_multiplier * 0.999)
  assert compute_epsilon(slightly_less, num_steps, delta) > target


def test_calibration_recovers_known_multiplier():
  # 1.712 is the epsilon of z = 1.1 at q = 0.01 over 1000 steps.
  spec = PrivacySpec(None, sampling_probability=0.01)
  noise_multiplier = calibrate_noise_multiplier(1.712, spec, 1e-5, 1000)
  assert noise_multiplier == pytest.approx(1.1, abs=2e-3)


def test_calibration_takes_the_most_exposed_group():
  specs = {
    "large": PrivacySpec(None, sampling_probability=0.02, num_rounds=100),
    "small": PrivacySpec(None, sampling_probability=0.2, num_rounds=100),
  }
  noise_multiplier = calibrate_noise_multiplier(2.0, specs, 1e-5)
  alone = calibrate_noise_multiplier(2.0, specs["small"], 1e-5)
  assert noise_multiplier == alone
  for spec in specs.values():
    calibrated = spec.replace(noise_multiplier=noise_multiplier)
    assert compute_epsilon(calibrated, 100, 1e-5) <= 2.0


def test_calibration_uses_planned_rounds():
  spec = PrivacySpec(None, sampling_probability=0.1, steps_per_round=5)
  short = calibrate_noise_multiplier(2.0, spec.replace(num_rounds=10), 1e-5)
  long = calibrate_noise_multiplier(2.0, spec.replace(num_rounds=40), 1e-5)
  explicit = calibrate_noise_multiplier(2.0, spec, 1e-5, num_steps=200)
  assert long > short
  assert explicit == long


def test_unreachable_target_raises():
  # The RDP orders of dp_accounting end at 1024, which bounds epsilon below
  # at about log(1/delta) / 1023, whatever the noise.
  spec = PrivacySpec(None, sampling_probability=1.0, num_rounds=1000)
  with pytest.raises(ValueError, match="target_epsilon=0.001") as error:
    calibrate_noise_multiplier(0.001, spec, 1e-5)
  assert "1000 rounds" in str(error.value)
  assert "Raise target_epsilon" in str(error.value)


def test_generous_target_returns_lower_bound():
  spec = PrivacySpec(None, sampling_probability=0.01, num_rounds=1)
  noise_multiplier = calibrate_noise_multiplier(
    50.0, spec, 1e-5, min_noise_multiplier=0.3
  )
  assert noise_multiplier == 0.3
  assert compute_epsilon(spec.replace(noise_multiplier=0.3), 1, 1e-5) <= 50.0


@pytest.mark.parametrize(
  "target, delta, message",
  [
    (0.0, 1e-5, "target_epsilon=0.0"),
    (-1.0, 1e-5, "target_epsilon=-1.0"),
    (1.0, 1.0, "delta=1.0"),
    (1.0, 0.0, "delta=0.0"),
  ],
)
def test_invalid_calibration_raises(target, delta, message):
  spec = PrivacySpec(None, sampling_probability=0.1, num_rounds=10)
  with pytest.raises(ValueError, match=message):
    calibrate_noise_multiplier(target, spec, delta)
