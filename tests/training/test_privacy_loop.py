"""Tests of privacy accounting inside the experiment loop."""

import json

import dp_accounting
import pytest

from configs import fed_heart_disease
from fedjax_med.data.registry import load_dataset
from fedjax_med.privacy.accounting import PrivacyAccountant, compute_epsilon
from fedjax_med.privacy.calibration import calibrate_noise_multiplier
from fedjax_med.training import experiment, privacy_budget
from fedjax_med.training.checkpoint import Checkpointer
from fedjax_med.training.writers import read_jsonl

# Training rows of the four Fed-Heart-Disease hospitals.
TRAIN_SIZES = {
  "Cleveland": 199,
  "Hungary": 172,
  "Switzerland": 30,
  "VA Long Beach": 85,
}


def _config(mode="example", **overrides):
  config = fed_heart_disease.get_config()
  config.num_rounds = 3
  config.eval_every = 3
  config.checkpoint_every = 2
  config.progress_bar = False
  config.client.num_local_steps = 2
  config.privacy.mode = mode
  config.privacy.delta = 1e-3
  if mode == "client":
    config.cohort.weighting = "uniform"
  with config.unlocked():
    for dotted, value in overrides.items():
      section, _, field = dotted.rpartition(".")
      target = config
      for part in filter(None, section.split(".")):
        target = target[part]
      target[field] = value
  return config


@pytest.fixture(scope="module")
def data():
  config = _config()
  return experiment.load_data(config)


def _epsilons(workdir):
  records = read_jsonl(str(workdir / "metrics.jsonl"))
  return [r["privacy/epsilon"] for r in records]


def test_example_level_specs_follow_each_client(data):
  specs = privacy_budget.build_privacy_specs(_config(), data, 1.0)
  assert set(specs) == set(TRAIN_SIZES)
  for name, size in TRAIN_SIZES.items():
    assert specs[name].sampling == "poisson"
    assert specs[name].sampling_probability == pytest.approx(16 / size)
    assert specs[name].steps_per_round == 2


def test_example_level_fixed_size_specs(data):
  config = _config(
    **{"privacy.batch_sampling": "fixed_size", "client.batch_size": 40}
  )
  specs = privacy_budget.build_privacy_specs(config, data, 1.0)
  assert specs["Switzerland"].sample_size == 30
  assert specs["Switzerland"].population_size == 30
  assert specs["Cleveland"].sample_size == 40
  assert specs["Cleveland"].population_size == 199


def test_client_level_specs_follow_the_cohort(data):
  uniform = privacy_budget.build_privacy_specs(
    _config("client", **{"cohort.clients_per_round": 2}), data, 1.0
  )["clients"]
  assert uniform.sampling == "fixed_size"
  assert uniform.sample_size == 2
  assert uniform.population_size == 4
  poisson = privacy_budget.build_privacy_specs(
    _config(
      "client", **{"cohort.sampling": "poisson", "cohort.poisson_rate": 0.5}
    ),
    data,
    1.0,
  )["clients"]
  assert poisson.sampling_probability == 0.5
  assert poisson.steps_per_round == 1


def test_capped_poisson_cohort_raises(data):
  config = _config(
    "client",
    **{
      "cohort.sampling": "poisson",
      "cohort.poisson_rate": 0.5,
      "cohort.clients_per_round": 2,
    },
  )
  with pytest.raises(ValueError, match="clients_per_round=2 caps"):
    privacy_budget.build_privacy_specs(config, data, 1.0)


def test_example_level_epsilon_logged_every_round(tmp_path):
  final = experiment.run_experiment(_config(), str(tmp_path))
  data = load_dataset("fed_heart_disease")
  specs = privacy_budget.build_privacy_specs(_config(), data, 1.0)
  expected = [
    max(compute_epsilon(s, 2 * r, 1e-3) for s in specs.values())
    for r in (1, 2, 3)
  ]
  assert _epsilons(tmp_path) == expected
  records = read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert records[0]["privacy/Switzerland/epsilon"] == expected[0]
  assert records[0]["privacy/Cleveland/epsilon"] < expected[0]
  saved = json.loads((tmp_path / "final_metrics.json").read_text())
  assert saved["epsilon"] == expected[-1]
  assert saved["delta"] == 1e-3
  assert saved["noise_multiplier"] == 1.0
  assert saved["stopped_at_budget"] is False
  assert set(saved["epsilon_per_client"]) == set(TRAIN_SIZES)
  assert final["epsilon"] == expected[-1]


def test_client_level_epsilon_is_composed_gaussian(tmp_path):
  # Every one of the 4 clients takes part in every round: an unsampled
  # Gaussian mechanism composed over the rounds.
  config = _config("client", **{"privacy.noise_multiplier": 5.0})
  final = experiment.run_experiment(config, str(tmp_path))
  accountant = dp_accounting.rdp.RdpAccountant()
  accountant.compose(
    dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(5.0), 3)
  )
  assert final["epsilon"] == pytest.approx(accountant.get_epsilon(1e-3))
  assert "epsilon_per_client" not in final
  records = read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert "privacy/Cleveland/epsilon" not in records[0]


def test_target_epsilon_calibrates_and_resume_keeps_it(tmp_path):
  config = _config("client", **{"privacy.target_epsilon": 3.0})
  first = experiment.run_experiment(config, str(tmp_path))
  data = load_dataset("fed_heart_disease")
  specs = privacy_budget.build_privacy_specs(config, data, None)
  expected = calibrate_noise_multiplier(3.0, specs, 1e-3)
  assert first["noise_multiplier"] == expected
  assert first["config"]["privacy"]["noise_multiplier"] == expected
  assert first["epsilon"] <= 3.0
  assert first["epsilon"] > 3.0 - 1e-2
  assert first["stopped_at_budget"] is False
  assert first["rounds"] == 3

  # Resumed for more rounds, the run keeps its noise and stops at once.
  longer = _config("client", num_rounds=6, **{"privacy.target_epsilon": 3.0})
  final = experiment.run_experiment(longer, str(tmp_path), resume=True)
  assert final["noise_multiplier"] == first["noise_multiplier"]
  assert final["stopped_at_budget"] is True
  assert final["rounds"] == 3
  assert final["epsilon"] == first["epsilon"]


def test_resumed_run_reports_same_epsilon(tmp_path):
  straight = tmp_path / "straight"
  final_straight = experiment.run_experiment(
    _config(num_rounds=6), str(straight)
  )
  resumed = tmp_path / "resumed"
  experiment.run_experiment(
    _config(num_rounds=3, checkpoint_every=3), str(resumed)
  )
  checkpointer = Checkpointer(str(resumed))
  saved = checkpointer.restore_metadata(3)["privacy"]
  checkpointer.close()
  assert PrivacyAccountant.from_state_dict(saved).num_rounds == 3
  final_resumed = experiment.run_experiment(
    _config(num_rounds=6, checkpoint_every=3), str(resumed), resume=True
  )
  assert final_resumed["epsilon"] == final_straight["epsilon"]
  assert (
    final_resumed["epsilon_per_client"]
    == (final_straight["epsilon_per_client"])
  )
  assert _epsilons(resumed) == _epsilons(straight)


def test_training_stops_at_budget(tmp_path):
  data = load_dataset("fed_heart_disease")
  specs = privacy_budget.build_privacy_specs(_config(), data, 1.0)
  accountant = PrivacyAccountant(specs, 1e-3)
  # A budget between the epsilon of 3 and of 4 rounds.
  target = (
    accountant.epsilon(num_rounds=3) + accountant.epsilon(num_rounds=4)
  ) / 2
  config = _config(
    num_rounds=8,
    **{"privacy.target_epsilon": target, "privacy.calibrate_noise": False},
  )
  final = experiment.run_experiment(config, str(tmp_path))
  assert final["stopped_at_budget"] is True
  assert final["rounds"] == 3
  assert final["epsilon"] == accountant.epsilon(num_rounds=3)
  assert final["epsilon"] <= target
  assert Checkpointer(str(tmp_path)).latest_round() == 3
  saved = json.loads((tmp_path / "final_metrics.json").read_text())
  assert saved["stopped_at_budget"] is True
  other_noise = _config(num_rounds=8, **{"privacy.noise_multiplier": 2.0})
  with pytest.raises(ValueError, match="differs from the checkpoint's 1.0"):
    experiment.run_experiment(other_noise, str(tmp_path), resume=True)
  assert [r["round"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))] == [
    1,
    2,
    3,
  ]


def test_first_round_over_budget_raises(tmp_path):
  config = _config(
    **{"privacy.target_epsilon": 0.01, "privacy.calibrate_noise": False}
  )
  with pytest.raises(ValueError, match="one round already spends"):
    experiment.run_experiment(config, str(tmp_path))


def test_non_private_run_has_no_privacy_entries(tmp_path):
  final = experiment.run_experiment(_config("none"), str(tmp_path))
  assert "epsilon" not in final
  records = read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert "privacy/epsilon" not in records[0]
  with pytest.raises(ValueError, match="no privacy accountant state"):
    experiment.run_experiment(_config(num_rounds=4), str(tmp_path), resume=True)
