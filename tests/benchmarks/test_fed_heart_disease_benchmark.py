"""The Fed-Heart-Disease benchmark script in --quick mode."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "fed_heart_disease.py"
SITES = ["Cleveland", "Hungary", "Switzerland", "VA Long Beach"]
COLUMNS = [*SITES, "pooled", "worst site", "pooled AUROC"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("benchmark")
  output = tmp_path / "results" / "quick.json"
  workdir = tmp_path / "runs"
  result = subprocess.run(
    [
      sys.executable,
      str(SCRIPT),
      "--quick",
      f"--output={output}",
      f"--workdir={workdir}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(output.read_text()), result.stdout, workdir


def test_quick_top_level_keys(quick_run):
  payload, _, _ = quick_run
  assert set(payload) == {
    "metadata",
    "seeds",
    "num_rounds",
    "columns",
    "methods",
    "table",
    "targets",
    "flamby",
  }
  assert payload["columns"] == COLUMNS
  assert payload["seeds"] == [0]
  assert payload["num_rounds"] == 3


def test_quick_runs_two_methods(quick_run):
  payload, _, _ = quick_run
  methods = payload["methods"]
  assert list(methods) == ["fedavg", "pooled"]
  for method, result in methods.items():
    assert set(result) == {"config", "runs", "summary"}
    assert result["config"]["num_rounds"] == 3
    assert result["config"]["algorithm"]["name"] == method
    assert [run["seed"] for run in result["runs"]] == [0]


def test_quick_run_values_and_summary(quick_run):
  payload, _, _ = quick_run
  for result in payload["methods"].values():
    (run,) = result["runs"]
    assert set(run["values"]) == set(COLUMNS)
    assert set(run["per_client"]) == set(SITES)
    assert run["values"]["pooled"] == run["pooled"]["accuracy"]
    assert run["values"]["worst site"] == min(
      run["values"][site] for site in SITES
    )
    for column in COLUMNS:
      cell = result["summary"][column]
      assert cell["mean"] == pytest.approx(run["values"][column])
      assert cell["num_seeds"] == 1
      assert cell["std"] is None  # NaN for one seed, written as null.


def test_quick_metadata(quick_run):
  payload, _, _ = quick_run
  metadata = payload["metadata"]
  assert "--quick" in metadata["command"]
  assert {"jax", "flax", "optax"} <= set(metadata["versions"])
  assert metadata["machine"]["cpu_count"] >= 1
  assert metadata["date"]


def test_quick_targets(quick_run):
  payload, _, _ = quick_run
  targets = payload["targets"]
  assert set(targets) == {"fedavg", "fedprox", "scaffold", "fedadam"}
  assert targets["fedavg"]["mean"] == pytest.approx(
    payload["methods"]["fedavg"]["summary"]["pooled"]["mean"]
  )
  assert targets["fedprox"] == {"target": 0.78, "mean": None, "passed": None}


def test_quick_prints_table_and_command(quick_run):
  payload, stdout, _ = quick_run
  assert payload["table"] in stdout
  assert "| FedAvg |" in payload["table"]
  assert "| Pooled |" in payload["table"]
  assert "| FedAvg 100 (FLamby) |" in payload["table"]
  assert "Command: python " in stdout


def test_quick_writes_runs_to_workdir(quick_run):
  _, _, workdir = quick_run
  for method in ("fedavg", "pooled"):
    assert (workdir / method / "0" / "final_metrics.json").exists()
