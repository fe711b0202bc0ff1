"""The long-tail benchmark script in --quick mode: the JSON's structure."""

import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "long_tail.py"
TASKS = {"severity", "digits"}
QUICK_METHODS = {"cross_entropy", "fedtail"}
COLUMNS = ["balanced accuracy", "macro F1", "tail recall", "pooled accuracy"]
NUM_CLASSES = {"severity": 5, "digits": 10}
SITES = {
  "severity": {"Cleveland", "Hungary", "Switzerland", "VA Long Beach"},
  "digits": {f"client_{k}" for k in range(10)},
}

# Two methods on two tasks compile four rounds, about 20 s on a 2-core CPU.
pytestmark = pytest.mark.slow


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
    "tasks",
    "results",
    "table",
    "notes",
    "total_seconds",
  }
  assert payload["columns"] == COLUMNS
  assert payload["seeds"] == {"severity": [0], "digits": [0]}
  assert payload["num_rounds"] == 1
  assert set(payload["results"]) == TASKS


@pytest.mark.parametrize("task", sorted(TASKS))
def test_quick_method_configs(quick_run, task):
  payload, _, _ = quick_run
  methods = payload["results"][task]
  assert set(methods) == QUICK_METHODS
  for method, result in methods.items():
    assert set(result) == {"config", "runs", "summary"}
    config = result["config"]
    assert config["num_rounds"] == 1
    assert [run["seed"] for run in result["runs"]] == [0]
    if method == "fedtail":
      assert config["algorithm"]["name"] == "fedtail"
      assert config["client"]["loss"] == "cross_entropy"
    else:
      assert config["algorithm"]["name"] == "fedavg"
      assert config["client"]["loss"] == method


@pytest.mark.parametrize("task", sorted(TASKS))
def test_quick_values_match_long_tail(quick_run, task):
  payload, _, _ = quick_run
  for result in payload["results"][task].values():
    (run,) = result["runs"]
    pooled = run["long_tail"]["pooled"]
    assert set(run["long_tail"]["per_client"]) == SITES[task]
    assert len(pooled["per_class_recall"]) == NUM_CLASSES[task]
    assert run["values"]["balanced accuracy"] == pooled["balanced_accuracy"]
    assert run["values"]["macro F1"] == pooled["macro_f1"]
    assert run["values"]["tail recall"] == pooled["tail_recall"]
    for column in COLUMNS:
      cell = result["summary"][column]
      assert cell["mean"] == pytest.approx(run["values"][column])
      assert cell["num_seeds"] == 1
      assert cell["std"] is None  # NaN for one seed, written as null.
      assert 0.0 <= cell["mean"] <= 1.0
    assert result["summary"]["per_class_recall"] == pytest.approx(
      pooled["per_class_recall"]
    )


@pytest.mark.parametrize("task", sorted(TASKS))
def test_quick_task_facts(quick_run, task):
  payload, _, _ = quick_run
  facts = payload["tasks"][task]
  support = facts["test_support_per_class"]
  assert len(support) == NUM_CLASSES[task]
  assert facts["num_clients"] == len(SITES[task])
  assert facts["test_examples"] == sum(support)
  assert facts["tail_test_examples"] == sum(
    support[c] for c in facts["tail_classes"]
  )
  # The tail contains the rarest classes, and never every class.
  assert 0 < len(facts["tail_classes"]) < NUM_CLASSES[task]


def test_severity_tail_is_grades_3_and_4(quick_run):
  payload, _, _ = quick_run
  assert payload["tasks"]["severity"]["tail_classes"] == [3, 4]


def test_quick_metadata(quick_run):
  payload, _, _ = quick_run
  metadata = payload["metadata"]
  assert "--quick" in metadata["command"]
  assert {"jax", "flax", "optax", "scikit-learn"} <= set(metadata["versions"])
  assert metadata["machine"]["cpu_count"] >= 1
  assert metadata["date"]
  assert math.isfinite(payload["total_seconds"])


def test_quick_prints_table_and_command(quick_run):
  payload, stdout, _ = quick_run
  table = payload["table"]
  assert table in stdout
  assert payload["notes"] in stdout
  assert len(table.splitlines()) == 2 + len(TASKS) * len(QUICK_METHODS)
  assert "| Heart severity | Cross-entropy |" in table
  assert "| Long-tailed digits | FEDTAIL |" in table
  assert "Command: python " in stdout


def test_quick_writes_runs_to_workdir(quick_run):
  _, _, workdir = quick_run
  for task in TASKS:
    for method in QUICK_METHODS:
      path = workdir / task / method / "0" / "final_metrics.json"
      assert path.exists()
