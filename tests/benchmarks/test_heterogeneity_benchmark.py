"""The heterogeneity benchmark: its configs, and --quick on the heart task."""

import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "heterogeneity.py"
HEART_SITES = {"Cleveland", "Hungary", "Switzerland", "VA Long Beach"}
COLUMNS = [
  "pooled accuracy",
  "worst-site accuracy",
  "personalized accuracy",
  "personalized worst site",
  "unseen-site accuracy",
  "unseen worst site",
]

sys.path.insert(0, str(ROOT / "benchmarks"))
import heterogeneity  # noqa: E402


@pytest.mark.parametrize("method", heterogeneity.METHODS)
def test_method_config_names_method(method):
  config = heterogeneity.method_config("heart", method)
  expected = "fedavg" if method == "fedavg_mlp" else method
  assert config.algorithm.name == expected
  assert config.data.name == "fed_heart_disease"


@pytest.mark.parametrize(
  "method",
  [
    m
    for m in heterogeneity.METHODS
    if m not in heterogeneity.HEART_ONLY_METHODS
  ],
)
def test_digits_config_takes_method_sections(method):
  config = heterogeneity.method_config("digits", method)
  heart = heterogeneity.method_config("heart", method)
  assert config.data.name == "digits_multidomain"
  assert config.model.name == "cnn"
  assert config.algorithm.to_dict() == heart.algorithm.to_dict()
  assert config.server.to_dict() == heart.server.to_dict()
  assert config.cohort.weighting == heart.cohort.weighting
  needs_batch_norm = method in ("fedbn", "fedstein")
  assert config.model.get("use_batch_norm", False) == needs_batch_norm


def test_heart_only_method_rejected_on_digits():
  with pytest.raises(ValueError, match="heart task only"):
    heterogeneity.method_config("digits", "fedavg_mlp")


def test_unknown_method_rejected():
  with pytest.raises(ValueError, match="method 'fedsgd' is unknown"):
    heterogeneity.method_config("heart", "fedsgd")


# Two methods, one seed, one round, each under both protocols (5 runs):
# about 30 s on a 2-core CPU.
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("benchmark")
  output = tmp_path / "quick.json"
  result = subprocess.run(
    [
      sys.executable,
      str(SCRIPT),
      "--quick",
      "--tasks=heart",
      f"--output={output}",
      f"--workdir={tmp_path / 'runs'}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(output.read_text()), result.stdout, output


@pytest.mark.slow
def test_quick_results_structure(quick_run):
  payload, _, _ = quick_run
  assert payload["columns"] == COLUMNS
  assert payload["seeds"] == [0]
  assert payload["num_rounds"] == 1
  methods = payload["results"]["heart"]
  assert set(methods) == set(heterogeneity.QUICK_METHODS)
  for result in methods.values():
    (run,) = result["runs"]
    assert set(run["per_site"]) == HEART_SITES
    for column in COLUMNS:
      assert 0.0 <= run["values"][column] <= 1.0
      assert result["summary"][column]["std"] is None  # NaN for one seed.


@pytest.mark.slow
def test_quick_worst_site_is_minimum(quick_run):
  payload, _, _ = quick_run
  for result in payload["results"]["heart"].values():
    (run,) = result["runs"]
    sites = run["per_site"].values()
    values = run["values"]
    assert values["worst-site accuracy"] == min(s["global"] for s in sites)
    assert values["personalized worst site"] == min(
      s["personalized"] for s in sites
    )
    assert values["unseen worst site"] == min(s["unseen"] for s in sites)


@pytest.mark.slow
def test_quick_fedavg_personalized_is_global(quick_run):
  # FedAvg has no personal models, so each site's model is the global one.
  payload, _, _ = quick_run
  (run,) = payload["results"]["heart"]["fedavg"]["runs"]
  for site in run["per_site"].values():
    assert site["personalized"] == site["global"]


@pytest.mark.slow
def test_quick_prints_table_and_metadata(quick_run):
  payload, stdout, _ = quick_run
  assert payload["table"] in stdout
  assert "| Fed-Heart-Disease | Ditto |" in payload["table"]
  assert "Command: python " in stdout
  assert "--quick" in payload["metadata"]["command"]
  assert math.isfinite(payload["total_seconds"])


@pytest.mark.slow
def test_merge_rejects_repeated_method(quick_run, tmp_path):
  _, _, output = quick_run
  result = subprocess.run(
    [
      sys.executable,
      str(SCRIPT),
      f"--merge={output},{output}",
      f"--output={tmp_path / 'merged.json'}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode != 0
  assert "repeats task 'heart'" in result.stderr


def test_merge_combines_tasks_in_table_order(tmp_path):
  def write(name, task, methods):
    path = tmp_path / name
    results = {task: {m: {"method": m} for m in methods}}
    path.write_text(json.dumps({"results": results}))
    return str(path)

  digits = write("digits.json", "digits", ["ditto", "fedavg"])
  heart = write("heart.json", "heart", ["afl", "fedbn"])
  merged = heterogeneity.merge_payloads([digits, heart])
  assert list(merged) == ["heart", "digits"]
  assert list(merged["digits"]) == ["fedavg", "ditto"]
  assert list(merged["heart"]) == ["fedbn", "afl"]
