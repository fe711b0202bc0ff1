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

# The script defines absl flags when imported, and other benchmark tests
# import their scripts into the test process, so this file reads the
# script's tables and configs through a subprocess.
_DUMP_CONFIGS = """
import json, sys
sys.path.insert(0, "benchmarks")
import heterogeneity as h
configs = {}
errors = {}
for task in h.TASKS:
  for method in h.METHODS:
    key = task + "/" + method
    try:
      configs[key] = h.method_config(task, method).to_dict()
    except ValueError as error:
      errors[key] = str(error)
try:
  h.method_config("heart", "fedsgd")
except ValueError as error:
  errors["heart/fedsgd"] = str(error)
print(json.dumps({
  "methods": list(h.METHODS),
  "heart_only": list(h.HEART_ONLY_METHODS),
  "quick_methods": list(h.QUICK_METHODS),
  "configs": configs,
  "errors": errors,
}, default=list))
"""


@pytest.fixture(scope="module")
def script_tables():
  result = subprocess.run(
    [sys.executable, "-c", _DUMP_CONFIGS],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.splitlines()[-1])


def test_method_config_names_method(script_tables):
  for method in script_tables["methods"]:
    config = script_tables["configs"][f"heart/{method}"]
    expected = "fedavg" if method == "fedavg_mlp" else method
    assert config["algorithm"]["name"] == expected, method
    assert config["data"]["name"] == "fed_heart_disease", method


def test_digits_config_takes_method_sections(script_tables):
  for method in script_tables["methods"]:
    if method in script_tables["heart_only"]:
      continue
    config = script_tables["configs"][f"digits/{method}"]
    heart = script_tables["configs"][f"heart/{method}"]
    assert config["data"]["name"] == "digits_multidomain", method
    assert config["model"]["name"] == "cnn", method
    assert config["algorithm"] == heart["algorithm"], method
    assert config["server"] == heart["server"], method
    assert config["cohort"]["weighting"] == heart["cohort"]["weighting"]
    needs_batch_norm = method in ("fedbn", "fedstein")
    uses_batch_norm = config["model"].get("use_batch_norm", False)
    assert uses_batch_norm == needs_batch_norm, method


def test_heart_only_method_rejected_on_digits(script_tables):
  assert "heart task only" in script_tables["errors"]["digits/fedavg_mlp"]


def test_unknown_method_rejected(script_tables):
  message = script_tables["errors"]["heart/fedsgd"]
  assert "method 'fedsgd' is unknown" in message


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
  assert set(methods) == {"fedavg", "ditto"}
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


@pytest.mark.slow
def test_merge_combines_tasks_in_table_order(quick_run, tmp_path):
  payload, _, output = quick_run
  # A second file with another task: the heart results relabelled.
  digits = dict(payload)
  digits["results"] = {"digits": payload["results"]["heart"]}
  digits_path = tmp_path / "digits.json"
  digits_path.write_text(json.dumps(digits))
  merged_path = tmp_path / "merged.json"
  result = subprocess.run(
    [
      sys.executable,
      str(SCRIPT),
      f"--merge={digits_path},{output}",
      f"--output={merged_path}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  merged = json.loads(merged_path.read_text())
  assert set(merged["results"]) == {"heart", "digits"}
  table_rows = merged["table"].splitlines()[2:]
  assert table_rows[0].startswith("| Fed-Heart-Disease | FedAvg |")
  assert table_rows[-1].startswith("| Multi-domain digits | Ditto |")
  assert len(merged["merged_from"]) == 2
