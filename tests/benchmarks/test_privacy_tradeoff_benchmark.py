"""The privacy trade-off benchmark script in --quick mode."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "privacy_tradeoff.py"
AUDIT_COLUMNS = {
  "membership_auc",
  "overfit_membership_auc",
  "inversion_mse",
  "inversion_baseline_mse",
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("privacy_benchmark")
  output = tmp_path / "results" / "quick.json"
  plot = tmp_path / "results" / "quick.png"
  result = subprocess.run(
    [
      sys.executable,
      str(SCRIPT),
      "--quick",
      f"--output={output}",
      f"--plot={plot}",
      f"--workdir={tmp_path / 'runs'}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(output.read_text()), result.stdout, plot


def test_quick_settings(quick_run):
  payload, _, _ = quick_run
  settings = payload["settings"]
  assert settings["seeds"] == [0]
  assert settings["epsilons"] == [2.0]
  assert settings["num_rounds"] == 2
  assert settings["delta"] < 1 / 30  # Switzerland's 30 training records.
  assert settings["audit"] is True


def test_quick_rows_no_dp_then_dp(quick_run):
  payload, _, _ = quick_run
  no_dp, dp = payload["rows"]
  assert no_dp["label"] == "no DP"
  assert no_dp["target_epsilon"] is None
  assert no_dp["runs"][0]["epsilon"] is None
  assert "epsilon" not in no_dp["summary"]
  assert dp["label"] == "2"
  (run,) = dp["runs"]
  assert run["rounds"] == 2
  assert 0 < run["epsilon"] <= 2.0
  assert run["epsilon"] == pytest.approx(2.0, rel=1e-3)
  assert run["noise_multiplier"] > 0
  assert dp["summary"]["pooled_accuracy"]["std"] is None  # One seed.


def test_quick_audit_numbers(quick_run):
  payload, _, _ = quick_run
  for row in payload["rows"]:
    (run,) = row["runs"]
    assert AUDIT_COLUMNS <= set(run)
    assert 0 <= run["membership_auc"] <= 1
    assert 0 <= run["overfit_membership_auc"] <= 1
    assert run["inversion_mse"] >= 0
    assert run["inversion_baseline_mse"] > 0
  no_dp_run, dp_run = (row["runs"][0] for row in payload["rows"])
  assert no_dp_run["overfit_noise_multiplier"] == 0.0
  assert dp_run["overfit_noise_multiplier"] > 0


def test_quick_overhead(quick_run):
  payload, _, _ = quick_run
  assert list(payload["overhead"]) == ["fed_heart_disease"]
  result = payload["overhead"]["fed_heart_disease"]
  median = result["median_seconds"]
  assert set(median) == {"none", "client", "example"}
  assert all(seconds > 0 for seconds in median.values())
  assert result["timed_rounds"] == 5
  for mode, limit in (("client", 1.5), ("example", 3.0)):
    ratio = result["ratios"][mode]
    assert ratio == pytest.approx(median[mode] / median["none"])
    assert result["targets"][mode] == {
      "max_ratio": limit,
      "passed": ratio <= limit,
    }


def test_quick_prints_tables_and_metadata(quick_run):
  payload, stdout, _ = quick_run
  assert payload["table"] in stdout
  assert payload["overhead_table"] in stdout
  assert "| no DP |" in payload["table"]
  assert "| fed_heart_disease |" in payload["overhead_table"]
  assert "Command: python " in stdout
  metadata = payload["metadata"]
  assert "--quick" in metadata["command"]
  assert {"jax", "dp-accounting"} <= set(metadata["versions"])
  assert metadata["machine"]["cpu_count"] >= 1


def test_quick_writes_png(quick_run):
  _, _, plot = quick_run
  assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
