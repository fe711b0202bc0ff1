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


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  output = tmp_path_factory.mktemp("benchmark") / "quick.json"
  result = subprocess.run(
    [sys.executable, str(SCRIPT), "--quick", f"--output={output}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(output.read_text()), result.stdout


def test_quick_payload_keys(quick_run):
  payload, _ = quick_run
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


def test_quick_bytes_match_trainable_params(quick_run):
  payload, _ = quick_run
  for method, result in payload["results"].items():
    for run in result["runs"]:
      params = run["trainable_params"]
      # Four hospitals send a float32 delta and a float32 weight each, and
      # receive the float32 model.
      assert run["uplink_bytes_per_round"] == 4 * (4 * params + 4), method
      assert run["downlink_bytes_per_round"] == 4 * 4 * params, method
      assert 0.0 <= run["pooled_accuracy"] <= 1.0


def test_quick_round_counts(quick_run):
  payload, _ = quick_run
  assert payload["results"]["lora"]["runs"][0]["num_rounds"] == 2
  # The tabular baseline keeps its config's rounds.
  assert payload["results"]["tabular_lr"]["runs"][0]["num_rounds"] == 50


def test_quick_table_printed(quick_run):
  payload, stdout = quick_run
  assert "| MiniLM + LoRA" in payload["table"]
  assert "| Tabular logistic regression" in payload["table"]
  assert payload["table"] in stdout
