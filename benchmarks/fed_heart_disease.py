r"""Accuracy of every method on Fed-Heart-Disease, over several seeds.

Runs each method once per seed through `run_experiment` and prints a
markdown table with one row per method. Its columns are each hospital's test
accuracy, the pooled test accuracy, the worst hospital's accuracy and the
pooled AUROC, and each cell is the mean and sample standard deviation over
seeds. FLamby's published rows follow ours, and then each accuracy target and
whether it is met. The JSON output contains every run's numbers, the summary,
the machine and the library versions.

Methods with a file `configs/fed_heart_disease_<method>.py` use it; the
others (fedavgm, fedadagrad, fedyogi) run the default config
`configs/fed_heart_disease.py` with only `algorithm.name` changed.

Run from the repository root:
  python benchmarks/fed_heart_disease.py
  python benchmarks/fed_heart_disease.py --quick --output=/tmp/quick.json
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging as pylogging
import os
import pathlib
import shlex
import sys
import tempfile
import time

import ml_collections
import numpy as np
from absl import app, flags, logging

from fedjax_med.algorithms.registry import ALGORITHM_NAMES
from fedjax_med.training import run_metadata
from fedjax_med.training.experiment import run_experiment, write_json

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
BASELINES = ("pooled", "local")
DEFAULT_METHODS = (
  "fedavg",
  "fedprox",
  "scaffold",
  "fedadam",
  "fedavgm",
  "fedyogi",
  "pooled",
  "local",
)
QUICK_METHODS = ("fedavg", "pooled")
QUICK_ROUNDS = 3

SITES = ("Cleveland", "Hungary", "Switzerland", "VA Long Beach")
COLUMNS = (*SITES, "pooled", "worst site", "pooled AUROC")
DISPLAY_NAMES = {
  "fedavg": "FedAvg",
  "fedprox": "FedProx",
  "scaffold": "SCAFFOLD",
  "fedavgm": "FedAvgM",
  "fedadagrad": "FedAdagrad",
  "fedadam": "FedAdam",
  "fedyogi": "FedYogi",
  "pooled": "Pooled",
  "local": "Local (own site)",
}

# FLamby's published test accuracies (owkin/FLamby,
# flamby/results/results_benchmark_fed_heart_disease.csv): Cleveland,
# Hungary, Switzerland, VA Long Beach, pooled. The model is logistic
# regression. The federated rows ran 15 rounds of 100 local SGD updates with
# batch size 4 and client learning rate 1e-4, or 1e-3 for FedProx. Pooled
# training used Adam at 1e-3. FLamby reports one run per row and no AUROC, so
# the worst site here is the minimum of the four site columns.
FLAMBY_ROWS = {
  "Pooled (FLamby)": (0.760, 0.798, 0.813, 0.756, 0.776),
  "FedAvg 100 (FLamby)": (0.654, 0.764, 0.063, 0.644, 0.654),
  "FedProx 100 (FLamby)": (0.462, 0.371, 0.938, 0.778, 0.516),
  "FedAdam 100 (FLamby)": (0.596, 0.652, 0.063, 0.600, 0.583),
  "FedYogi 100 (FLamby)": (0.462, 0.371, 0.938, 0.778, 0.516),
  "Scaffold 100 (FLamby)": (0.625, 0.775, 0.563, 0.756, 0.697),
}

# Minimum mean pooled test accuracy per method.
TARGETS = {"fedavg": 0.80, "fedprox": 0.78, "scaffold": 0.78, "fedadam": 0.78}

_SEEDS = flags.DEFINE_list(
  "seeds", ["0", "1", "2", "3", "4"], "Comma-separated integer seeds."
)
_METHODS = flags.DEFINE_list(
  "methods",
  list(DEFAULT_METHODS),
  f"Comma-separated methods: any of {ALGORITHM_NAMES + BASELINES}.",
)
_NUM_ROUNDS = flags.DEFINE_integer(
  "num_rounds", None, "Rounds per run; unset keeps each config's num_rounds."
)
_OUTPUT = flags.DEFINE_string(
  "output",
  "benchmarks/results/fed_heart_disease.json",
  "Path of the JSON results file.",
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "Directory for the runs' metrics and checkpoints; unset uses a temporary "
  "directory that is deleted at the end.",
)
_QUICK = flags.DEFINE_bool(
  "quick",
  False,
  f"Smoke run: seed 0, {QUICK_ROUNDS} rounds, methods "
  f"{','.join(QUICK_METHODS)}. Flags passed explicitly still apply.",
)


def load_config_file(path: pathlib.Path) -> ml_collections.ConfigDict:
  """Returns `get_config()` of the config file at `path`."""
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def method_config(method: str) -> ml_collections.ConfigDict:
  """Returns the config that the benchmark runs for `method`."""
  if method not in ALGORITHM_NAMES + BASELINES:
    raise ValueError(
      f"method {method!r} is unknown; use one of {ALGORITHM_NAMES + BASELINES}."
    )
  path = CONFIG_DIR / f"fed_heart_disease_{method}.py"
  if path.exists():
    return load_config_file(path)
  config = load_config_file(CONFIG_DIR / "fed_heart_disease.py")
  config.algorithm.name = method
  return config


def row_values(final: dict) -> dict[str, float]:
  """Picks the table's columns out of one run's final metrics.

  The local baseline has no single model, so its pooled AUROC is NaN. Its
  pooled accuracy counts each site's test rows predicted by that site's own
  model.
  """
  values = {site: final["per_client"][site]["accuracy"] for site in SITES}
  values["pooled"] = final["pooled_test_accuracy"]
  values["worst site"] = final["worst_client"]["accuracy"]
  pooled = final.get("pooled")
  values["pooled AUROC"] = pooled["auroc"] if pooled else float("nan")
  return {k: float(v) for k, v in values.items()}


def summarize(runs: list[dict]) -> dict[str, dict[str, float]]:
  """Returns the mean and sample standard deviation of each column.

  The standard deviation uses ddof=1 and is NaN for a single seed.
  """
  summary = {}
  for column in COLUMNS:
    values = np.asarray([run["values"][column] for run in runs])
    std = np.std(values, ddof=1) if len(values) > 1 else np.nan
    summary[column] = {
      "mean": float(np.mean(values)),
      "std": float(std),
      "num_seeds": len(values),
    }
  return summary


def run_method(
  method: str, seeds: list[int], num_rounds: int | None, workdir: str
) -> dict:
  """Runs `method` once per seed and returns the config, runs and summary."""
  config = method_config(method)
  config.progress_bar = False
  if num_rounds is not None:
    config.num_rounds = num_rounds
  runs = []
  for seed in seeds:
    config.seed = seed
    start = time.perf_counter()
    final = run_experiment(config, os.path.join(workdir, method, str(seed)))
    seconds = time.perf_counter() - start
    runs.append(
      {
        "seed": seed,
        "seconds": seconds,
        "values": row_values(final),
        "per_client": final["per_client"],
        "pooled": final.get("pooled"),
        "worst_client": final["worst_client"],
      }
    )
    print(
      f"{method} seed {seed}: pooled accuracy "
      f"{final['pooled_test_accuracy']:.4f} ({seconds:.1f} s)",
      flush=True,
    )
  config.seed = seeds[0]
  return {
    "config": config.to_dict(),
    "runs": runs,
    "summary": summarize(runs),
  }


def _cell(mean: float, std: float) -> str:
  if np.isnan(mean):
    return "n/a"
  if np.isnan(std):
    return f"{mean:.3f}"
  return f"{mean:.3f} ± {std:.3f}"


def format_table(results: dict[str, dict]) -> str:
  """Formats our methods and FLamby's published rows as a markdown table."""
  lines = [
    "| method | " + " | ".join(COLUMNS) + " |",
    "|---|" + "---|" * len(COLUMNS),
  ]
  for method, result in results.items():
    summary = result["summary"]
    cells = [_cell(summary[c]["mean"], summary[c]["std"]) for c in COLUMNS]
    name = DISPLAY_NAMES.get(method, method)
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  for name, accuracies in FLAMBY_ROWS.items():
    cells = [f"{a:.3f}" for a in accuracies]
    cells += [f"{min(accuracies[:4]):.3f}", "n/a"]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def check_targets(results: dict[str, dict]) -> dict[str, dict]:
  """Compares each targeted method's mean pooled accuracy to its target.

  A method that was not run has `mean` and `passed` set to None.
  """
  checks = {}
  for method, target in TARGETS.items():
    mean = None
    if method in results:
      mean = results[method]["summary"]["pooled"]["mean"]
    checks[method] = {
      "target": target,
      "mean": mean,
      "passed": None if mean is None else bool(mean >= target),
    }
  return checks


def format_targets(checks: dict[str, dict]) -> str:
  lines = []
  for method, check in checks.items():
    name = DISPLAY_NAMES[method]
    if check["mean"] is None:
      verdict = "not run"
    else:
      status = "holds" if check["passed"] else "FAILS"
      verdict = f"{check['mean']:.3f} ({status})"
    lines.append(
      f"- {name} mean pooled accuracy >= {check['target']:.2f}: {verdict}"
    )
  return "\n".join(lines)


def collect_metadata(command: str) -> dict:
  """Returns the command, library versions and machine of this run."""
  return run_metadata.collect_metadata(command, run_metadata.DEFAULT_PACKAGES)


def _resolve_options() -> tuple[list[str], list[int], int | None]:
  """Applies --quick to the method, seed and round flags not passed."""
  methods, seeds, num_rounds = _METHODS.value, _SEEDS.value, _NUM_ROUNDS.value
  if _QUICK.value:
    if not flags.FLAGS["methods"].present:
      methods = list(QUICK_METHODS)
    if not flags.FLAGS["seeds"].present:
      seeds = ["0"]
    if not flags.FLAGS["num_rounds"].present:
      num_rounds = QUICK_ROUNDS
  try:
    seed_values = [int(seed) for seed in seeds]
  except ValueError as error:
    raise app.UsageError(
      f"--seeds={','.join(seeds)} is invalid; pass integers, e.g. "
      "--seeds=0,1,2."
    ) from error
  if not seed_values:
    raise app.UsageError("--seeds is empty; pass e.g. --seeds=0,1,2.")
  if num_rounds is not None and num_rounds < 1:
    raise app.UsageError(
      f"--num_rounds={num_rounds} is invalid; pass a positive integer."
    )
  for method in methods:
    if method not in ALGORITHM_NAMES + BASELINES:
      raise app.UsageError(
        f"--methods contains {method!r}, which is unknown; use any of "
        f"{','.join(ALGORITHM_NAMES + BASELINES)}."
      )
  return methods, seed_values, num_rounds


def run_benchmark(
  methods: list[str], seeds: list[int], num_rounds: int | None, workdir: str
) -> dict[str, dict]:
  """Runs every method for every seed and returns results keyed by method."""
  return {
    method: run_method(method, seeds, num_rounds, workdir) for method in methods
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  methods, seeds, num_rounds = _resolve_options()
  # The runs log every evaluation at INFO; keep the output to the table.
  logging.set_verbosity(logging.WARNING)
  # Switzerland's test split contains one class, so its AUROC is NaN at every
  # evaluation and tensorboardX warns each time it writes that scalar.
  pylogging.getLogger("tensorboardX.x2num").setLevel(pylogging.ERROR)
  command = "python " + shlex.join(sys.argv)

  if _WORKDIR.value is None:
    with tempfile.TemporaryDirectory() as workdir:
      results = run_benchmark(methods, seeds, num_rounds, workdir)
  else:
    results = run_benchmark(methods, seeds, num_rounds, _WORKDIR.value)

  table = format_table(results)
  checks = check_targets(results)
  payload = {
    "metadata": collect_metadata(command),
    "seeds": seeds,
    "num_rounds": num_rounds,
    "columns": list(COLUMNS),
    "methods": results,
    "table": table,
    "targets": checks,
    "flamby": {name: list(row) for name, row in FLAMBY_ROWS.items()},
  }
  output = os.path.abspath(_OUTPUT.value)
  os.makedirs(os.path.dirname(output), exist_ok=True)
  write_json(output, payload)

  print()
  print(
    f"Test accuracy on Fed-Heart-Disease, mean ± std over seeds {seeds} "
    "(FLamby rows: one published run)."
  )
  print()
  print(table)
  print()
  print("Targets:")
  print(format_targets(checks))
  print()
  print(f"Command: {command}")
  print(f"Results: {output}")


if __name__ == "__main__":
  app.run(main)
