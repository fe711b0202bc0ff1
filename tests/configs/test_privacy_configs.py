"""The DP-SGD, DP-FedAvg and secure aggregation configs, run for 2 rounds."""

import importlib.util
import json
import pathlib
import re

import pytest

from fedjax_med.training.experiment import load_data, run_experiment

ROOT = pathlib.Path(__file__).resolve().parents[2]
PRIVACY_CONFIGS = (
  "fed_heart_disease_dp_sgd",
  "digits_dp_fedavg",
  "fed_heart_disease_secagg",
)
PRIVACY_KEYS = {"epsilon", "delta", "noise_multiplier", "stopped_at_budget"}
SECAGG_METRICS = {
  "train/secagg_survivors",
  "train/secagg_dropped",
  "train/secagg_aborted",
  "train/secagg_noise_std",
}


def _load(name):
  path = ROOT / "configs" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run_two_rounds(name, tmp_path, **privacy_overrides):
  config = _load(name).get_config()
  config.num_rounds = 2
  config.eval_every = 2
  config.checkpoint_every = 2
  config.progress_bar = False
  for field, value in privacy_overrides.items():
    config.privacy[field] = value
  final = run_experiment(config, str(tmp_path))
  records = [
    json.loads(line)
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
  ]
  return config, final, records


@pytest.mark.parametrize("name", PRIVACY_CONFIGS)
def test_docstring_overrides_name_real_fields(name):
  module = _load(name)
  config = module.get_config()
  overrides = re.findall(r"--config\.([\w.]+)=", module.__doc__)
  assert overrides, f"{name} documents no command-line override"
  for field in overrides:
    section, _, leaf = field.rpartition(".")
    node = config[section] if section else config
    assert leaf in node, f"--config.{field} is not a field of {name}"


def test_dp_sgd_delta_below_one_over_smallest_hospital():
  config = _load("fed_heart_disease_dp_sgd").get_config()
  sizes = load_data(config).train.num_examples
  assert config.privacy.delta < 1.0 / sizes.sum()
  assert config.privacy.delta < 1.0 / sizes.min()


@pytest.mark.slow
def test_dp_sgd_config_two_rounds(tmp_path):
  config, final, records = _run_two_rounds("fed_heart_disease_dp_sgd", tmp_path)
  assert PRIVACY_KEYS <= set(final)
  assert final["privacy_mode"] == "example"
  assert final["rounds"] == 2
  assert 0 < final["epsilon"] <= config.privacy.target_epsilon
  assert final["delta"] == config.privacy.delta
  # Calibrated from target_epsilon, not the default of the base config.
  assert final["noise_multiplier"] != 1.0
  per_client = final["epsilon_per_client"]
  assert max(per_client, key=per_client.get) == "Switzerland"
  assert final["epsilon"] == pytest.approx(max(per_client.values()))

  epsilons = [record["privacy/epsilon"] for record in records]
  assert len(epsilons) == 2
  assert 0 < epsilons[0] < epsilons[1]
  assert epsilons[1] == pytest.approx(final["epsilon"])


@pytest.mark.slow
def test_digits_dp_fedavg_config_two_rounds(tmp_path):
  config, final, records = _run_two_rounds("digits_dp_fedavg", tmp_path)
  assert config.cohort.clients_per_round == config.data.num_clients
  assert config.privacy.delta < 1.0 / config.data.num_clients
  assert PRIVACY_KEYS <= set(final)
  assert final["privacy_mode"] == "client"
  assert final["noise_multiplier"] == 1.0
  assert final["epsilon"] > 0

  for record in records:
    assert "privacy/epsilon" in record
    # Adaptive clipping logs the clip norm it used.
    assert record["train/clip_norm"] > 0
  assert records[0]["privacy/epsilon"] < records[1]["privacy/epsilon"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["none", "client"])
def test_secagg_config_two_rounds(tmp_path, mode):
  config, final, records = _run_two_rounds(
    "fed_heart_disease_secagg", tmp_path, mode=mode
  )
  assert config.privacy.secagg_threshold <= config.cohort.clients_per_round
  assert final["rounds"] == 2
  for record in records:
    assert SECAGG_METRICS <= set(record)
    cohort = record["train/cohort_size"]
    survivors = record["train/secagg_survivors"]
    assert survivors + record["train/secagg_dropped"] == cohort
    aborted = survivors < config.privacy.secagg_threshold
    assert record["train/secagg_aborted"] == float(aborted)

  if mode == "none":
    assert "epsilon" not in final
    assert all(record["train/secagg_noise_std"] == 0 for record in records)
  else:
    assert PRIVACY_KEYS <= set(final)
    assert final["epsilon"] > 0
    assert all(record["train/secagg_noise_std"] > 0 for record in records)
