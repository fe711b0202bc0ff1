"""The FedHypeVAE benchmark script in --quick mode."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "fedhypevae.py"

pytestmark = pytest.mark.slow


def test_quick_run_reports_every_setting(tmp_path):
  output = tmp_path / "quick.json"
  result = subprocess.run(
    [sys.executable, str(SCRIPT), "--quick", f"--output={output}"],
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": str(ROOT)},
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  payload = json.loads(output.read_text())
  labels = [row["label"] for row in payload["rows"]]
  assert labels == [
    "pooled real",
    "FedAvg real",
    "FedHypeVAE no DP",
    "FedHypeVAE eps=3",
  ]
  private = payload["rows"][-1]["runs"][0]
  assert 0 < private["epsilon"] <= 3.0
  assert payload["rows"][2]["runs"][0]["epsilon"] is None
  for row in payload["rows"]:
    run = row["runs"][0]
    assert 0.0 <= run["accuracy"] <= 1.0
    assert 0.0 <= run["balanced_accuracy"] <= 1.0
  assert "| FedHypeVAE eps=3 |" in payload["table"]
