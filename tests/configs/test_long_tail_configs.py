"""The long-tail configs run end to end and report long-tail metrics."""

import json
import pathlib
import subprocess
import sys

import pytest

from fedjax_med.training.config_files import load_config_file
from fedjax_med.training.experiment import run_experiment

ROOT = pathlib.Path(__file__).resolve().parents[2]
LONG_TAIL_KEYS = {"balanced_accuracy", "macro_f1", "tail_recall"}


def _config(name, **overrides):
  config = load_config_file(ROOT / "configs" / f"{name}.py")
  config.num_rounds = 2
  config.eval_every = 1
  config.progress_bar = False
  for field, value in overrides.items():
    section, key = field.split(".")
    config[section][key] = value
  return config


@pytest.mark.parametrize(
  "name,overrides,tail",
  [
    (
      "fed_heart_disease_severity",
      {"algorithm.name": "fedtail", "client.loss": "alpa"},
      [3, 4],
    ),
    ("digits_long_tail", {"client.loss": "logit_adjustment"}, [6, 7, 8, 9]),
  ],
  ids=["severity_fedtail_alpa", "digits_logit_adjustment"],
)
def test_config_runs_two_rounds(tmp_path, name, overrides, tail):
  final = run_experiment(_config(name, **overrides), str(tmp_path))
  written = json.loads((tmp_path / "final_metrics.json").read_text())
  pooled = written["long_tail"]["pooled"]
  assert final["rounds"] == 2
  assert written["long_tail"]["tail_classes"] == tail
  assert LONG_TAIL_KEYS <= set(pooled)
  assert set(written["long_tail"]["per_client"]) == set(written["per_client"])
  assert 0.0 <= pooled["balanced_accuracy"] <= 1.0


def test_severity_config_defaults():
  config = _config("fed_heart_disease_severity")
  assert config.data.target == "severity"
  assert config.client.loss == "cross_entropy"


def test_train_script_overrides_loss_option(tmp_path):
  command = [
    sys.executable,
    "scripts/train.py",
    "--config=configs/fed_heart_disease_severity.py",
    f"--workdir={tmp_path}",
    "--config.num_rounds=2",
    "--config.progress_bar=False",
    "--config.client.loss=focal",
    "--config.client.loss_options.focal.gamma=1.0",
  ]
  subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
  written = json.loads((tmp_path / "final_metrics.json").read_text())
  assert written["config"]["client"]["loss"] == "focal"
  assert written["config"]["client"]["loss_options"]["focal"]["gamma"] == 1.0
  assert LONG_TAIL_KEYS <= set(written["long_tail"]["pooled"])
  assert written["long_tail"]["tail_classes"] == [3, 4]
