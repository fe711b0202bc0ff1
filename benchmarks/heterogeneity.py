r"""Methods for heterogeneous sites against FedAvg, on two multi-site tasks.

Runs every method once per seed through `run_experiment` under two
protocols, on two tasks:

- "heart": Fed-Heart-Disease, the four hospitals as sites (natural feature
  and label shift), each method's `configs/fed_heart_disease_<method>.py`.
- "digits": scikit-learn digits split into six sites, each with its own
  fixed acquisition shift (`configs/digits_multidomain.py`). Each method
  takes its `algorithm` and `server` sections and `cohort.weighting` from
  its heart config, the CNN with the changes in `DIGITS_MODEL_OPTIONS`, and
  everything else from the digits config.

The standard protocol trains on every site and reports the global model's
pooled accuracy and worst-site accuracy, and the personalized accuracy:
each site's own model on its own test split (the global model for methods
without personal models). The leave-one-site-out protocol trains once per
site on all the other sites and tests the global model on the unseen one.
It reports the mean over held-out sites and the worst one.

The markdown table has one row per task and method, each cell the mean and
sample standard deviation over seeds. The JSON output also contains every
run's per-site accuracies under both protocols.

Run from the repository root:
  python benchmarks/heterogeneity.py
  python benchmarks/heterogeneity.py --tasks=heart --output=/tmp/heart.json
  python benchmarks/heterogeneity.py --quick --output=/tmp/quick.json
  python benchmarks/heterogeneity.py --merge=/tmp/heart.json,/tmp/digits.json
"""

from __future__ import annotations

import json
import logging as pylogging
import os
import pathlib
import shlex
import sys
import tempfile
import time
from typing import NamedTuple

import ml_collections
import numpy as np
from absl import app, flags, logging

from fedjax_med.training import run_metadata
from fedjax_med.training.config_files import load_config_file
from fedjax_med.training.experiment import run_experiment, write_json

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"


class Task(NamedTuple):
  """A benchmark task: its base config file and how the table names it."""

  config_file: str
  display_name: str


TASKS = {
  "heart": Task("fed_heart_disease.py", "Fed-Heart-Disease"),
  "digits": Task("digits_multidomain.py", "Multi-domain digits"),
}
DISPLAY_NAMES = {
  "fedavg": "FedAvg",
  "fedavg_mlp": "FedAvg, MLP (32)",
  "fedbn": "FedBN",
  "fedstein": "FedStein",
  "univarfl": "UniVarFL",
  "moon": "MOON",
  "ditto": "Ditto",
  "pfedhn": "pFedHN",
  "fedneuro": "FedNeuro",
  "fedvr": "FedVR (reconstruction)",
  "fedalign": "FedAlign",
  "qfedavg": "q-FedAvg",
  "afl": "AFL",
}
METHODS = tuple(DISPLAY_NAMES)
# On Fed-Heart-Disease the default FedAvg trains logistic regression, while
# the methods that act on hidden layers train an MLP with 32 hidden units.
# "fedavg_mlp" is FedAvg on that MLP. On digits every method trains the CNN,
# so that row would repeat FedAvg's and is skipped.
HEART_ONLY_METHODS = ("fedavg_mlp",)
# Model options each method needs on the digits CNN.
DIGITS_MODEL_OPTIONS = {
  "fedbn": {"use_batch_norm": True},
  "fedstein": {"use_batch_norm": True},
}
COLUMNS = (
  "pooled accuracy",
  "worst-site accuracy",
  "personalized accuracy",
  "personalized worst site",
  "unseen-site accuracy",
  "unseen worst site",
)
QUICK_METHODS = ("fedavg", "ditto")
QUICK_ROUNDS = 1

_TASKS = flags.DEFINE_list(
  "tasks", list(TASKS), f"Comma-separated tasks: any of {list(TASKS)}."
)
_METHODS = flags.DEFINE_list(
  "methods",
  list(METHODS),
  f"Comma-separated methods: any of {list(METHODS)}.",
)
_SEEDS = flags.DEFINE_list(
  "seeds", ["0", "1", "2"], "Comma-separated integer seeds."
)
_NUM_ROUNDS = flags.DEFINE_integer(
  "num_rounds", None, "Rounds per run; unset keeps each config's num_rounds."
)
_OUTPUT = flags.DEFINE_string(
  "output",
  "benchmarks/results/heterogeneity.json",
  "Path of the JSON results file.",
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "Directory for the runs' metrics and checkpoints; unset uses a temporary "
  "directory that is deleted at the end.",
)
_MERGE = flags.DEFINE_list(
  "merge",
  [],
  "Comma-separated JSON outputs of earlier runs (for example one per task) "
  "to combine into --output without running anything.",
)
_QUICK = flags.DEFINE_bool(
  "quick",
  False,
  f"Smoke run: seed 0, {QUICK_ROUNDS} round, methods "
  f"{','.join(QUICK_METHODS)}. Flags passed explicitly still apply.",
)


def method_config(task: str, method: str) -> ml_collections.ConfigDict:
  """Returns the config that the benchmark runs for `method` on `task`.

  Raises:
    ValueError: For an unknown task or method.
  """
  if task not in TASKS:
    raise ValueError(f"task {task!r} is unknown; use one of {list(TASKS)}.")
  if method not in METHODS:
    raise ValueError(
      f"method {method!r} is unknown; use one of {list(METHODS)}."
    )
  if method in ("fedavg", "fedavg_mlp"):
    heart_file = "fed_heart_disease.py"
  else:
    heart_file = f"fed_heart_disease_{method}.py"
  heart = load_config_file(CONFIG_DIR / heart_file)
  if method == "fedavg_mlp":
    heart.model.name = "mlp"
    heart.model.hidden_sizes = (32,)
  if task == "heart":
    config = heart
  else:
    if method in HEART_ONLY_METHODS:
      raise ValueError(f"method {method!r} runs on the heart task only.")
    config = load_config_file(CONFIG_DIR / TASKS[task].config_file)
    config.algorithm = heart.algorithm
    config.server = heart.server
    config.cohort.weighting = heart.cohort.weighting
    for option, value in DIGITS_MODEL_OPTIONS.get(method, {}).items():
      config.model[option] = value
  config.algorithm.name = "fedavg" if method == "fedavg_mlp" else method
  config.progress_bar = False
  return config


def _accuracy_values(final: dict, loso: dict) -> dict[str, float]:
  """Picks the table's columns out of one seed's two final metrics."""
  personalized = final["personalized"]
  held_out = loso["leave_one_site_out"]
  values = {
    "pooled accuracy": final["pooled_test_accuracy"],
    "worst-site accuracy": final["worst_client"]["accuracy"],
    "personalized accuracy": personalized["client_mean"]["accuracy"],
    "personalized worst site": personalized["worst_client"]["accuracy"],
    "unseen-site accuracy": held_out["mean"]["accuracy"],
    "unseen worst site": held_out["worst_site"]["accuracy"],
  }
  return {k: float(v) for k, v in values.items()}


def _per_site(final: dict, loso: dict) -> dict[str, dict[str, float]]:
  """Returns each site's accuracy under the three evaluations."""
  sites = {}
  for name, metrics in final["per_client"].items():
    sites[name] = {
      "global": float(metrics["accuracy"]),
      "personalized": float(
        final["personalized"]["per_client"][name]["accuracy"]
      ),
      "unseen": float(loso["leave_one_site_out"]["per_site"][name]["accuracy"]),
    }
  return sites


def summarize(runs: list[dict]) -> dict[str, dict]:
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
  task: str,
  method: str,
  seeds: list[int],
  num_rounds: int | None,
  workdir: str,
) -> dict:
  """Runs `method` on `task` under both protocols once per seed.

  Returns:
    {"config": the config of the first seed, "runs": one entry per seed,
    "summary": `summarize(runs)`}.
  """
  config = method_config(task, method)
  if num_rounds is not None:
    config.num_rounds = num_rounds
  runs = []
  for seed in seeds:
    config.seed = seed
    start = time.perf_counter()
    base = os.path.join(workdir, task, method, str(seed))
    config.protocol = "standard"
    final = run_experiment(config, os.path.join(base, "standard"))
    config.protocol = "leave_one_site_out"
    loso = run_experiment(config, os.path.join(base, "leave_one_site_out"))
    config.protocol = "standard"
    seconds = time.perf_counter() - start
    values = _accuracy_values(final, loso)
    runs.append(
      {
        "seed": seed,
        "seconds": seconds,
        "values": values,
        "per_site": _per_site(final, loso),
      }
    )
    print(
      f"{task} {method} seed {seed}: pooled "
      f"{values['pooled accuracy']:.4f}, personalized "
      f"{values['personalized accuracy']:.4f}, unseen "
      f"{values['unseen-site accuracy']:.4f} ({seconds:.1f} s)",
      flush=True,
    )
  config.seed = seeds[0]
  return {"config": config.to_dict(), "runs": runs, "summary": summarize(runs)}


def _cell(mean: float | None, std: float | None) -> str:
  # Results read back from JSON (--merge) carry NaN as None.
  mean = np.nan if mean is None else mean
  std = np.nan if std is None else std
  if np.isnan(mean):
    return "n/a"
  if np.isnan(std):
    return f"{mean:.3f}"
  return f"{mean:.3f} ± {std:.3f}"


def format_table(results: dict[str, dict[str, dict]]) -> str:
  """Formats every task's methods as one markdown table."""
  lines = [
    "| task | method | " + " | ".join(COLUMNS) + " |",
    "|---|---|" + "---|" * len(COLUMNS),
  ]
  for task, methods in results.items():
    for method, result in methods.items():
      summary = result["summary"]
      cells = [_cell(summary[c]["mean"], summary[c]["std"]) for c in COLUMNS]
      lines.append(
        f"| {TASKS[task].display_name} | {DISPLAY_NAMES[method]} | "
        + " | ".join(cells)
        + " |"
      )
  return "\n".join(lines)


def format_notes(results: dict[str, dict[str, dict]], seeds: list[int]) -> str:
  """Formats the settings behind each task's rows as markdown bullets."""
  lines = []
  for task, methods in results.items():
    first = next(iter(methods.values()))
    config = first["config"]
    sites = list(first["runs"][0]["per_site"])
    lines.append(
      f"- {TASKS[task].display_name}: {len(sites)} sites ({', '.join(sites)}),"
      f" {config['num_rounds']} rounds, seeds {seeds}."
    )
  lines.append(
    "- A seed sets the model's initialization and the minibatches. The "
    "train/test split is the same for every seed."
  )
  lines.append(
    "- Worst-site columns are the lowest per-site accuracy of each run, "
    "averaged over seeds. Unseen-site accuracy is the global model trained "
    "without a site, tested on that site, averaged over sites."
  )
  return "\n".join(lines)


def collect_metadata(command: str) -> dict:
  """Returns the command, library versions and machine of this run."""
  return run_metadata.collect_metadata(
    command, (*run_metadata.DEFAULT_PACKAGES, "scikit-learn")
  )


def _resolve_options() -> tuple[list[str], list[str], list[int], int | None]:
  """Applies --quick to the flags not passed and validates them."""
  tasks, methods, seeds = _TASKS.value, _METHODS.value, _SEEDS.value
  num_rounds = _NUM_ROUNDS.value
  if _QUICK.value:
    if not flags.FLAGS["methods"].present:
      methods = list(QUICK_METHODS)
    if not flags.FLAGS["seeds"].present:
      seeds = ["0"]
    if not flags.FLAGS["num_rounds"].present:
      num_rounds = QUICK_ROUNDS
  for task in tasks:
    if task not in TASKS:
      raise app.UsageError(
        f"--tasks contains {task!r}, which is unknown; use any of "
        f"{','.join(TASKS)}."
      )
  for method in methods:
    if method not in METHODS:
      raise app.UsageError(
        f"--methods contains {method!r}, which is unknown; use any of "
        f"{','.join(METHODS)}."
      )
  if not tasks or not methods:
    raise app.UsageError("--tasks and --methods must each name at least one.")
  if num_rounds is not None and num_rounds < 1:
    raise app.UsageError(
      f"--num_rounds={num_rounds} is invalid; pass a positive integer."
    )
  try:
    seed_values = [int(seed) for seed in seeds]
  except ValueError as error:
    raise app.UsageError(
      f"--seeds={','.join(seeds)} is invalid; pass integers, e.g. "
      "--seeds=0,1,2."
    ) from error
  if not seed_values:
    raise app.UsageError("--seeds is empty; pass e.g. 0,1,2.")
  return tasks, methods, seed_values, num_rounds


def build_payload(
  results: dict[str, dict[str, dict]],
  seeds: list[int],
  num_rounds: int | None,
  command: str,
  seconds: float,
) -> dict:
  """Returns the JSON payload: results, table, notes and run metadata."""
  return {
    "metadata": collect_metadata(command),
    "seeds": seeds,
    "num_rounds": num_rounds,
    "columns": list(COLUMNS),
    "results": results,
    "table": format_table(results),
    "notes": format_notes(results, seeds),
    "total_seconds": seconds,
  }


def merge_payloads(paths: list[str]) -> dict[str, dict[str, dict]]:
  """Combines the results of several runs of this script, task by task.

  Raises:
    ValueError: If two files contain the same task and method.
  """
  merged: dict[str, dict[str, dict]] = {}
  for path in paths:
    payload = json.loads(pathlib.Path(path).read_text())
    for task, methods in payload["results"].items():
      for method, result in methods.items():
        if method in merged.get(task, {}):
          raise ValueError(
            f"{path} repeats task {task!r}, method {method!r}; pass each "
            "result once."
          )
        merged.setdefault(task, {})[method] = result
  # Keep the table's order fixed whatever the order of the files.
  return {
    task: {m: merged[task][m] for m in METHODS if m in merged[task]}
    for task in TASKS
    if task in merged
  }


def _print_payload(payload: dict, output: pathlib.Path) -> None:
  print(payload["table"])
  print()
  print(payload["notes"])
  print()
  print(f"Command: {payload['metadata']['command']}")
  print(f"Wrote {output} in {payload['total_seconds']:.0f} s.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  command = shlex.join(["python", *sys.argv])
  output = pathlib.Path(_OUTPUT.value)
  output.parent.mkdir(parents=True, exist_ok=True)
  if _MERGE.value:
    results = merge_payloads(_MERGE.value)
    first = json.loads(pathlib.Path(_MERGE.value[0]).read_text())
    payload = build_payload(
      results, first["seeds"], first["num_rounds"], command, 0.0
    )
    payload["merged_from"] = [
      json.loads(pathlib.Path(path).read_text())["metadata"]
      for path in _MERGE.value
    ]
    write_json(str(output), payload)
    _print_payload(payload, output)
    return
  tasks, methods, seeds, num_rounds = _resolve_options()
  # Each run logs its per-site table; the summary below is what matters.
  logging.set_verbosity(logging.WARNING)
  pylogging.getLogger("absl").setLevel(pylogging.WARNING)
  start = time.perf_counter()
  results: dict[str, dict[str, dict]] = {}
  with tempfile.TemporaryDirectory() as scratch:
    workdir = _WORKDIR.value or scratch
    for task in tasks:
      results[task] = {}
      for method in methods:
        if task != "heart" and method in HEART_ONLY_METHODS:
          continue
        results[task][method] = run_method(
          task, method, seeds, num_rounds, workdir
        )
        # Written after every method, so a long run that stops early keeps
        # what it finished.
        payload = build_payload(
          results, seeds, num_rounds, command, time.perf_counter() - start
        )
        write_json(str(output), payload)
  _print_payload(payload, output)


if __name__ == "__main__":
  app.run(main)
