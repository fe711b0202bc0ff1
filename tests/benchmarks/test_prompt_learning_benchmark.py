"""The prompt learning benchmark's script, run briefly in a subprocess."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "prompt_learning.py"
SITES = {"clean", "contrast", "blur", "noise", "inverted", "low_resolution"}


@pytest.mark.slow
def test_short_run_writes_results(tmp_path):
  output = tmp_path / "prompts.json"
  completed = subprocess.run(
    [
      sys.executable,
      str(SCRIPT),
      "--methods=zero_shot,coop,biprompt",
      "--num_rounds=1",
      "--align_steps=2",
      "--seeds=0",
      f"--output={output}",
    ],
    cwd=ROOT,
    env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert completed.returncode == 0, completed.stderr[-3000:]
  assert "| CoOp, FedAvg |" in completed.stdout
  payload = json.loads(output.read_text())
  assert payload["seeds"] == [0]
  results = payload["runs"][0]["results"]
  assert set(results) == {"zero_shot", "coop", "biprompt"}
  for row in results.values():
    for key in ("base_accuracy", "new_accuracy"):
      assert 0.0 <= row[key] <= 1.0
    b, n = row["base_accuracy"], row["new_accuracy"]
    expected = 0.0 if b + n == 0 else 2 * b * n / (b + n)
    assert row["harmonic_mean"] == pytest.approx(expected)
  assert set(results["zero_shot"]["base_per_site"]) == SITES
  # Six sites each send 4 context vectors of width 32 and one weight.
  assert results["coop"]["num_prompt_params"] == 4 * 32
  assert results["coop"]["uplink_bytes_per_round"] == 6 * (4 * 4 * 32 + 4)
  for method, row in payload["summary"].items():
    assert row["base_accuracy"] == results[method]["base_accuracy"]
    assert row["base_accuracy_std"] == 0.0
  assert payload["metadata"]["command"].startswith("python")
