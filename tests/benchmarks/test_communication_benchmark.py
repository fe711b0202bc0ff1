"""The communication benchmark script in --quick mode: JSON and plot."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "communication.py"
QUICK_METHODS = {"newton", "flens_code", "fedavg_qsgd"}
QUICK_ROUNDS = 3

# Three methods, three rounds each: 35 s on a loaded 2-core CPU.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  output = tmp_path_factory.mktemp("benchmark") / "results" / "quick.json"
  result = subprocess.run(
    [sys.executable, str(SCRIPT), "--quick", f"--output={output}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(output.read_text()), result.stdout, output


def test_quick_top_level_keys(quick_run):
  payload, _, _ = quick_run
  assert set(payload) == {
    "metadata",
    "l2",
    "tolerances",
    "seeds",
    "results",
    "table",
    "plot",
    "total_seconds",
  }
  assert payload["tolerances"] == [1e-4, 1e-6]
  assert payload["seeds"] == [0]


def test_quick_runs_have_traces(quick_run):
  payload, _, _ = quick_run
  assert set(payload["results"]) == QUICK_METHODS
  for method, result in payload["results"].items():
    assert result["num_rounds"] == QUICK_ROUNDS, method
    for run in result["runs"]:
      for key in ("suboptimality", "uplink_bytes", "downlink_bytes"):
        assert len(run[key]) == QUICK_ROUNDS, (method, key)
      cumulative = np.asarray(run["cumulative_bytes"])
      assert np.all(np.diff(cumulative) > 0), method
      assert set(run["to_target"]) == {"0.0001", "1e-06"}


def test_quick_newton_suboptimality_decreases(quick_run):
  payload, _, _ = quick_run
  gaps = np.asarray(payload["results"]["newton"]["runs"][0]["suboptimality"])
  assert np.all(gaps >= -1e-12)
  assert np.all(np.diff(gaps) < 0)
  assert gaps[-1] < 1e-3


def test_quick_qsgd_sends_fewer_uplink_bytes(quick_run):
  # QSGD sends about 6 bits per coordinate; float64 Newton sends 64 bits
  # for each of 14 gradient and 196 Hessian entries per client.
  payload, _, _ = quick_run
  qsgd = payload["results"]["fedavg_qsgd"]["runs"][0]["uplink_bytes"][0]
  newton = payload["results"]["newton"]["runs"][0]["uplink_bytes"][0]
  assert newton == 4 * (14 + 14 * 14) * 8
  assert 0 < qsgd < newton


def test_quick_prints_table_and_writes_plot(quick_run):
  payload, stdout, output = quick_run
  assert payload["table"] in stdout
  assert "| Newton (exact) |" in payload["table"]
  assert "Command: python" in stdout
  assert output.with_suffix(".png").stat().st_size > 0
