r"""Long-tail losses and FEDTAIL on two long-tailed federated tasks.

Runs cross-entropy, each long-tail loss (focal, class_balanced,
balanced_softmax, logit_adjustment, alpa) and FEDTAIL once per seed through
`run_experiment`, on two tasks:

- "severity": Fed-Heart-Disease with the five-level `num` target (grades 0
  to 4) across the four hospitals, multinomial logistic regression and
  FedAvg, 50 rounds (`configs/fed_heart_disease_severity.py`).
- "digits": scikit-learn digits made long-tailed (exponential profile,
  imbalance ratio 10) and split over 10 clients with Dirichlet(0.5) label
  skew, the patch-convolution CNN and FedAvg, 30 rounds
  (`configs/digits_long_tail.py`).

Every loss runs with FedAvg and the options of its config section
`client.loss_options.<loss>`. FEDTAIL runs with cross-entropy and the
config's `algorithm.rho`, `matching_weight` and `tail_fraction`. A seed sets
the model's initialization and the minibatches. The train/test split is the
same for every seed.

The markdown table has one row per task and method. Its columns are the
pooled test set's balanced accuracy, macro F1 and tail recall, and the pooled
test accuracy, each as the mean and sample standard deviation over seeds.
Tail recall is the mean recall over the tail classes. These are the rarest
classes that together contain at most 20% of the training examples
(`long_tail.tail_fraction` in the configs). The JSON output also contains
every run's per-class recall and the long-tail metrics of every site.

Run from the repository root:
  python benchmarks/long_tail.py
  python benchmarks/long_tail.py --quick --output=/tmp/quick.json
"""

from __future__ import annotations

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
  """A benchmark task: its config file and how the table names it."""

  config_file: str
  display_name: str


TASKS = {
  "severity": Task("fed_heart_disease_severity.py", "Heart severity"),
  "digits": Task("digits_long_tail.py", "Long-tailed digits"),
}
METHODS = (
  "cross_entropy",
  "focal",
  "class_balanced",
  "balanced_softmax",
  "logit_adjustment",
  "alpa",
  "fedtail",
)
DISPLAY_NAMES = {
  "cross_entropy": "Cross-entropy",
  "focal": "Focal",
  "class_balanced": "Class-balanced",
  "balanced_softmax": "Balanced softmax",
  "logit_adjustment": "Logit adjustment",
  "alpa": "ALPA",
  "fedtail": "FEDTAIL",
}
COLUMNS = ("balanced accuracy", "macro F1", "tail recall", "pooled accuracy")
QUICK_METHODS = ("cross_entropy", "fedtail")
QUICK_ROUNDS = 1

_TASKS = flags.DEFINE_list(
  "tasks", list(TASKS), f"Comma-separated tasks: any of {list(TASKS)}."
)
_METHODS = flags.DEFINE_list(
  "methods",
  list(METHODS),
  f"Comma-separated methods: any of {list(METHODS)}.",
)
_SEVERITY_SEEDS = flags.DEFINE_list(
  "severity_seeds",
  ["0", "1", "2", "3", "4"],
  "Comma-separated integer seeds of the severity task.",
)
_DIGITS_SEEDS = flags.DEFINE_list(
  "digits_seeds",
  ["0", "1", "2"],
  "Comma-separated integer seeds of the digits task.",
)
_NUM_ROUNDS = flags.DEFINE_integer(
  "num_rounds", None, "Rounds per run; unset keeps each config's num_rounds."
)
_OUTPUT = flags.DEFINE_string(
  "output",
  "benchmarks/results/long_tail.json",
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
  f"Smoke run: seed 0 of each task, {QUICK_ROUNDS} rounds, methods "
  f"{','.join(QUICK_METHODS)}. Flags passed explicitly still apply.",
)


def method_config(task: str, method: str) -> ml_collections.ConfigDict:
  """Returns the config that the benchmark runs for `method` on `task`."""
  if task not in TASKS:
    raise ValueError(f"task {task!r} is unknown; use one of {list(TASKS)}.")
  if method not in METHODS:
    raise ValueError(
      f"method {method!r} is unknown; use one of {list(METHODS)}."
    )
  config = load_config_file(CONFIG_DIR / TASKS[task].config_file)
  config.progress_bar = False
  if method == "fedtail":
    config.algorithm.name = "fedtail"
    config.client.loss = "cross_entropy"
  else:
    config.algorithm.name = "fedavg"
    config.client.loss = method
  return config


def row_values(final: dict) -> dict[str, float]:
  """Picks the table's columns out of one run's final metrics."""
  pooled = final["long_tail"]["pooled"]
  values = {
    "balanced accuracy": pooled["balanced_accuracy"],
    "macro F1": pooled["macro_f1"],
    "tail recall": pooled["tail_recall"],
    "pooled accuracy": final["pooled_test_accuracy"],
  }
  return {k: float(v) for k, v in values.items()}


def summarize(runs: list[dict]) -> dict[str, dict]:
  """Returns the mean and sample standard deviation of each column.

  The standard deviation uses ddof=1 and is NaN for a single seed. The
  entry "per_class_recall" contains the mean over seeds of the pooled
  recall of every class.
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
  recalls = np.asarray(
    [run["long_tail"]["pooled"]["per_class_recall"] for run in runs],
    np.float64,
  )
  summary["per_class_recall"] = np.mean(recalls, axis=0).tolist()
  return summary


def run_method(
  task: str,
  method: str,
  seeds: list[int],
  num_rounds: int | None,
  workdir: str,
) -> dict:
  """Runs `method` on `task` once per seed and returns its results.

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
    final = run_experiment(
      config, os.path.join(workdir, task, method, str(seed))
    )
    seconds = time.perf_counter() - start
    values = row_values(final)
    runs.append(
      {
        "seed": seed,
        "seconds": seconds,
        "values": values,
        "long_tail": final["long_tail"],
      }
    )
    print(
      f"{task} {method} seed {seed}: balanced accuracy "
      f"{values['balanced accuracy']:.4f}, tail recall "
      f"{values['tail recall']:.4f} ({seconds:.1f} s)",
      flush=True,
    )
  config.seed = seeds[0]
  return {
    "config": config.to_dict(),
    "runs": runs,
    "summary": summarize(runs),
  }


def task_facts(result: dict) -> dict:
  """Returns the model, rounds, tail classes and test supports of a task.

  `result` is any method's output of `run_method` on the task. All methods
  of a task train and test on the same data, so these facts are the same
  for each of them.
  """
  config = result["config"]
  long_tail = result["runs"][0]["long_tail"]
  support = long_tail["pooled"]["per_class_support"]
  tail = long_tail["tail_classes"]
  return {
    "model": config["model"]["name"],
    "num_rounds": config["num_rounds"],
    "num_clients": len(long_tail["per_client"]),
    "tail_classes": tail,
    "test_support_per_class": support,
    "tail_test_examples": int(sum(support[c] for c in tail)),
    "test_examples": int(long_tail["pooled"]["num_examples"]),
  }


def _cell(mean: float, std: float) -> str:
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


def _logit_adjustment_is_balanced_softmax(methods: dict[str, dict]) -> bool:
  """Returns whether both losses ran and logit adjustment used tau = 1."""
  if not {"balanced_softmax", "logit_adjustment"} <= set(methods):
    return False
  config = methods["logit_adjustment"]["config"]
  return config["client"]["loss_options"]["logit_adjustment"]["tau"] == 1.0


def format_notes(
  results: dict[str, dict[str, dict]],
  facts: dict[str, dict],
  seeds: dict[str, list[int]],
) -> str:
  """Formats the settings behind each task's rows as markdown bullets."""
  lines = []
  for task, fact in facts.items():
    support = fact["test_support_per_class"]
    tail_support = ", ".join(
      f"class {c}: {support[c]}" for c in fact["tail_classes"]
    )
    lines.append(
      f"- {TASKS[task].display_name}: {fact['model']} model, "
      f"{fact['num_clients']} clients, {fact['num_rounds']} rounds, seeds "
      f"{seeds[task]}. Tail classes {fact['tail_classes']} have "
      f"{fact['tail_test_examples']} of the {fact['test_examples']} pooled "
      f"test examples ({tail_support})."
    )
  lines.append(
    "- A seed sets the model's initialization and the minibatches. The "
    "train/test split is the same for every seed."
  )
  lines.append(
    "- Losses run with FedAvg and the default options of their config "
    "section. FEDTAIL runs with cross-entropy. None of them was tuned."
  )
  if any(_logit_adjustment_is_balanced_softmax(m) for m in results.values()):
    lines.append(
      "- Logit adjustment with tau = 1 is the same loss as balanced "
      "softmax, so their rows agree."
    )
  return "\n".join(lines)


def collect_metadata(command: str) -> dict:
  """Returns the command, library versions and machine of this run."""
  return run_metadata.collect_metadata(
    command, (*run_metadata.DEFAULT_PACKAGES, "scikit-learn")
  )


def _parse_seeds(flag_name: str, seeds: list[str]) -> list[int]:
  try:
    values = [int(seed) for seed in seeds]
  except ValueError as error:
    raise app.UsageError(
      f"--{flag_name}={','.join(seeds)} is invalid; pass integers, e.g. "
      f"--{flag_name}=0,1,2."
    ) from error
  if not values:
    raise app.UsageError(f"--{flag_name} is empty; pass e.g. 0,1,2.")
  return values


def _resolve_options() -> tuple[list[str], list[str], dict, int | None]:
  """Applies --quick to the flags not passed and validates them."""
  tasks, methods, num_rounds = _TASKS.value, _METHODS.value, _NUM_ROUNDS.value
  seed_flags = {"severity": _SEVERITY_SEEDS, "digits": _DIGITS_SEEDS}
  seeds = {task: flag.value for task, flag in seed_flags.items()}
  if _QUICK.value:
    if not flags.FLAGS["methods"].present:
      methods = list(QUICK_METHODS)
    for task, flag in seed_flags.items():
      if not flags.FLAGS[flag.name].present:
        seeds[task] = ["0"]
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
  seed_values = {
    task: _parse_seeds(seed_flags[task].name, seeds[task]) for task in tasks
  }
  return tasks, methods, seed_values, num_rounds


def run_benchmark(
  tasks: list[str],
  methods: list[str],
  seeds: dict[str, list[int]],
  num_rounds: int | None,
  workdir: str,
) -> dict[str, dict[str, dict]]:
  """Runs every method on every task and keys the results by both."""
  return {
    task: {
      method: run_method(task, method, seeds[task], num_rounds, workdir)
      for method in methods
    }
    for task in tasks
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  tasks, methods, seeds, num_rounds = _resolve_options()
  # The runs log every evaluation at INFO. Show warnings only, so that the
  # output is the progress lines and the table.
  logging.set_verbosity(logging.WARNING)
  # Sites whose test split lacks a class have NaN AUROC, and tensorboardX
  # warns each time it writes that scalar.
  pylogging.getLogger("tensorboardX.x2num").setLevel(pylogging.ERROR)
  command = "python " + shlex.join(sys.argv)

  start = time.perf_counter()
  if _WORKDIR.value is None:
    with tempfile.TemporaryDirectory() as workdir:
      results = run_benchmark(tasks, methods, seeds, num_rounds, workdir)
  else:
    results = run_benchmark(tasks, methods, seeds, num_rounds, _WORKDIR.value)
  total_seconds = time.perf_counter() - start

  facts = {
    task: task_facts(next(iter(results[task].values()))) for task in tasks
  }
  table = format_table(results)
  notes = format_notes(results, facts, seeds)
  metadata = collect_metadata(command)
  payload = {
    "metadata": metadata,
    "seeds": seeds,
    "num_rounds": num_rounds,
    "columns": list(COLUMNS),
    "tasks": facts,
    "results": results,
    "table": table,
    "notes": notes,
    "total_seconds": total_seconds,
  }
  output = os.path.abspath(_OUTPUT.value)
  os.makedirs(os.path.dirname(output), exist_ok=True)
  write_json(output, payload)

  machine = metadata["machine"]
  versions = metadata["versions"]
  print()
  print(
    "Pooled test metrics on long-tailed tasks, mean ± std over seeds "
    "(tail recall: mean recall over the tail classes)."
  )
  print()
  print(table)
  print()
  print("Notes:")
  print(notes)
  print()
  print(f"Command: {command}")
  print(
    f"Machine: {machine['platform']}, {machine['cpu_model']}, "
    f"{machine['cpu_count']} CPUs, JAX backend {machine['jax_backend']}."
  )
  print("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
  print(f"Total time: {total_seconds:.0f} s")
  print(f"Results: {output}")


if __name__ == "__main__":
  app.run(main)
