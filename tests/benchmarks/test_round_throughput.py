"""The round throughput benchmark script in --quick mode.

Timings are machine-dependent, so these tests check the JSON's structure,
the arithmetic between its figures and the equivalence check, never speed.
"""

import importlib.util
import json
import pathlib
import sys

import pytest
from absl import flags

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "round_throughput.py"
WORKLOADS = ["mlp", "cnn_patches", "cnn_lax"]

# The quick run compiles both ways for three workloads, which takes about
# 20 s on a 2-core CPU.
pytestmark = pytest.mark.slow


def _load_script():
  # The script imports its sibling client_loops.py, as running it would.
  if str(SCRIPT.parent) not in sys.path:
    sys.path.insert(0, str(SCRIPT.parent))
  spec = importlib.util.spec_from_file_location("round_throughput", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  output = tmp_path_factory.mktemp("benchmark") / "results" / "quick.json"
  argv = [str(SCRIPT), "--quick", f"--output={output}"]
  module = _load_script()
  saved_argv = sys.argv
  sys.argv = argv
  try:
    flags.FLAGS(argv)
    module.main(argv[:1])
  finally:
    sys.argv = saved_argv
    flags.FLAGS.unparse_flags()
  return json.loads(output.read_text())


def test_quick_top_level_keys(quick_run):
  assert set(quick_run) == {
    "metadata",
    "settings",
    "workloads",
    "table",
    "targets",
  }
  assert set(quick_run["workloads"]) == set(WORKLOADS)
  assert quick_run["settings"]["workloads"] == WORKLOADS
  assert quick_run["settings"]["quick"] is True
  assert quick_run["settings"]["rounds"] == 2


@pytest.mark.parametrize("name", WORKLOADS)
def test_quick_workload_figures(quick_run, name):
  result = quick_run["workloads"][name]
  for way in ("compiled", "loop", "fedjax_loop"):
    times = result[way]
    assert set(times) == {
      "median_seconds",
      "round_seconds",
      "first_round_seconds",
    }
    assert len(times["round_seconds"]) == 2
    assert times["median_seconds"] == pytest.approx(
      sum(times["round_seconds"]) / 2
    )
  assert result["ratio"] == pytest.approx(
    result["loop"]["median_seconds"] / result["compiled"]["median_seconds"]
  )
  assert result["fedjax_ratio"] == pytest.approx(
    result["fedjax_loop"]["median_seconds"]
    / result["compiled"]["median_seconds"]
  )
  assert result["clients_per_round"] == result["num_clients"]


@pytest.mark.parametrize("name", WORKLOADS)
def test_quick_equivalence_passed(quick_run, name):
  equivalence = quick_run["workloads"][name]["equivalence"]
  assert equivalence["passed"] is True
  assert equivalence["max_abs_diff"] <= equivalence["atol"]


def test_quick_conv_impls(quick_run):
  workloads = quick_run["workloads"]
  assert workloads["mlp"]["model"] == "mlp"
  assert workloads["cnn_patches"]["conv_impl"] == "patches"
  assert workloads["cnn_lax"]["conv_impl"] == "lax"
  assert workloads["cnn_lax"]["feature_shape"] == [8, 8, 1]


def test_quick_targets(quick_run):
  targets = quick_run["targets"]
  assert set(targets) == {"mlp", "cnn_patches"}
  for name, check in targets.items():
    ratio = quick_run["workloads"][name]["fedjax_ratio"]
    assert check["ratio"] == pytest.approx(ratio)
    assert check["met"] == (ratio >= check["min_ratio"])


def test_quick_metadata(quick_run):
  metadata = quick_run["metadata"]
  assert "--quick" in metadata["command"]
  assert {"jax", "jaxlib", "flax", "optax"} <= set(metadata["versions"])
  machine = metadata["machine"]
  assert machine["cpu_count"] >= machine["cpu_affinity_count"] >= 1
  assert machine["jax_backend"]
  assert machine["cpu_model"]
  assert metadata["date"]


def test_quick_table_lists_workloads(quick_run):
  for name in WORKLOADS:
    assert f"| {name} |" in quick_run["table"]
