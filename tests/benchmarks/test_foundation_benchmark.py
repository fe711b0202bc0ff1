"""The federated fine-tuning benchmark in --quick mode: JSON and table."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "foundation.py"

# LoRA on a one-layer encoder and the tabular model, two rounds each.
pytestmark = pytest.mark.slow


def test_quick_run(tmp_path):
  # One test for every check, because under pytest-xdist a module fixture
  # would run the benchmark once per worker.
  output = tmp_path / "quick.json"
  result = subprocess.run(
    [sys.executable, str(SCRIPT), "--quick", f"--output={output}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  payload = json.loads(output.read_text())

  assert set(payload) == {
    "metadata",
    "quick",
    "seeds",
    "results",
    "table",
    "total_seconds",
  }
  assert payload["quick"] is True
  assert payload["seeds"] == [0]
  assert set(payload["results"]) == {"lora", "tabular_lr"}

  for method, result_of_method in payload["results"].items():
    for run in result_of_method["runs"]:
      params = run["trainable_params"]
      # Four hospitals send a float32 delta and a float32 weight each, and
      # receive the float32 model.
      assert run["uplink_bytes_per_round"] == 4 * (4 * params + 4), method
      assert run["downlink_bytes_per_round"] == 4 * 4 * params, method
      assert 0.0 <= run["pooled_accuracy"] <= 1.0

  assert payload["results"]["lora"]["runs"][0]["num_rounds"] == 2
  # The tabular baseline keeps its config's rounds.
  assert payload["results"]["tabular_lr"]["runs"][0]["num_rounds"] == 50

  assert "| MiniLM + LoRA" in payload["table"]
  assert "| Tabular logistic regression" in payload["table"]
  assert payload["table"] in result.stdout
