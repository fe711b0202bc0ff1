"""The clinical-sentence configs, and one run of each through train.py."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
METHODS = ("lora", "prompt", "scl")


def _load(name):
  path = ROOT / "configs" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("method", METHODS)
def test_config_selects_method(method):
  config = _load(f"fed_heart_disease_{method}")
  assert config.data.name == "fed_heart_disease_text"
  assert config.model.name == "minilm"
  assert config.model.peft == method
  tabular = _load("fed_heart_disease")
  assert config.data.split_seed == tabular.data.split_seed
  assert config.data.test_fraction == tabular.data.test_fraction


@pytest.mark.slow
def test_train_script_runs_lora(tmp_path):
  # One layer and 16 tokens keep the run short; the code path is the full
  # config's.
  command = [
    sys.executable,
    "scripts/train.py",
    "--config=configs/fed_heart_disease_lora.py",
    f"--workdir={tmp_path}",
    "--config.num_rounds=2",
    "--config.eval_every=2",
    "--config.progress_bar=False",
    "--config.model.num_layers=1",
    "--config.data.max_length=16",
    "--config.client.num_local_steps=1",
  ]
  subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
  written = json.loads((tmp_path / "final_metrics.json").read_text())
  assert written["rounds"] == 2
  assert 0.0 <= written["pooled_test_accuracy"] <= 1.0
  rows = [
    json.loads(line)
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
  ]
  # Rank 8 on query and value of one layer plus the head, float32, and
  # the float32 aggregation weight, from each of the four hospitals.
  adapter_bytes = 4 * (2 * 8 * (384 + 384) + 385)
  assert rows[0]["train/uplink_bytes"] == 4 * (adapter_bytes + 4)
