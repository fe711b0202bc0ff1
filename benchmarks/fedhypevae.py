r"""FedHypeVAE's synthetic-embedding classifier against real-data references.

Every setting runs `configs/digits_fedhypevae.py` (digits embeddings from an
encoder trained on a public split, 10 clients with Dirichlet label skew
alpha = 0.3) through `run_experiment`, once per seed. The seed changes the
initialization and training randomness; the data split stays that of data
seed 0. Settings:

  * "pooled real": the loop's pooled baseline, a linear classifier trained
    centrally on all clients' real training embeddings (no DP);
  * "FedAvg real": FedAvg of the same linear classifier on the real
    embeddings (no DP);
  * "FedHypeVAE": the linear classifier trained only on synthetic
    embeddings, without DP and at each `--epsilons` target (delta 1e-5,
    DP-SGD noise calibrated so that the run, class statistics release
    included, spends the target).

Each row reports, on every client's held-out test split, the pooled
accuracy, the pooled balanced accuracy and the mean over clients of the
per-client accuracy (the FedHypeVAE paper averages over clients), as mean
and sample standard deviation over seeds, with the epsilon spent.

Run from the repository root:
  python benchmarks/fedhypevae.py --output=benchmarks/results/fedhypevae.json
  python benchmarks/fedhypevae.py --quick --output=/tmp/fedhypevae.json
"""

from __future__ import annotations

import logging as pylogging
import os
import pathlib
import shlex
import sys
import tempfile
import time

import numpy as np
from absl import app, flags, logging

from fedjax_med.training import run_metadata
from fedjax_med.training.config_files import load_config_file
from fedjax_med.training.experiment import run_experiment, write_json

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_PATH = ROOT / "configs" / "digits_fedhypevae.py"

_EPSILONS = flags.DEFINE_list(
  "epsilons", ["1.0", "3.0"], "Target epsilons of the private FedHypeVAE rows."
)
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every setting.")
_NUM_ROUNDS = flags.DEFINE_integer(
  "num_rounds", 0, "Rounds of every run; 0 keeps the config's."
)
_QUICK = flags.DEFINE_bool(
  "quick",
  False,
  "Smoke test: seed 0, 2 rounds, epsilon 3 only, short synthesis.",
)
_OUTPUT = flags.DEFINE_string(
  "output", "benchmarks/results/fedhypevae.json", "JSON results file."
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for the runs; a temporary one if unset."
)


def reference_config(name: str, num_rounds: int):
  """Returns the config of a real-embedding reference ("pooled", "fedavg")."""
  config = load_config_file(CONFIG_PATH)
  config.algorithm.name = name
  config.privacy.mode = "none"
  config.client.optimizer = "sgd"
  config.client.learning_rate = 0.1
  config.client.num_local_steps = 10
  config.client.batch_size = 16
  if num_rounds:
    config.num_rounds = num_rounds
  config.eval_every = config.num_rounds
  return config


def fedhypevae_config(epsilon: float | None, num_rounds: int, quick: bool):
  """Returns FedHypeVAE's config, private at `epsilon` unless it is None."""
  config = load_config_file(CONFIG_PATH)
  if epsilon is None:
    config.privacy.mode = "none"
  else:
    config.privacy.target_epsilon = float(epsilon)
  if num_rounds:
    config.num_rounds = num_rounds
  config.eval_every = config.num_rounds
  if quick:
    config.algorithm.synthesis.meta_code_steps = 10
    config.algorithm.synthesis.classifier_steps = 20
    config.algorithm.synthesis.samples_per_class = 20
  return config


def summarize(final: dict) -> dict:
  """Returns the accuracies and epsilon of one run's final metrics."""
  return {
    "accuracy": final["pooled"]["accuracy"],
    "balanced_accuracy": final["long_tail"]["pooled"]["balanced_accuracy"],
    "client_mean_accuracy": final["client_mean"]["accuracy"],
    "epsilon": final.get("epsilon"),
    "noise_multiplier": final.get("noise_multiplier"),
  }


def run_setting(label, make_config, seeds, workdir) -> dict:
  """Runs one setting for every seed."""
  runs = []
  for seed in seeds:
    config = make_config()
    config.seed = seed
    config.progress_bar = False
    start = time.perf_counter()
    final = run_experiment(config, os.path.join(workdir, f"{label}_{seed}"))
    runs.append(
      {"seed": seed, **summarize(final), "seconds": time.perf_counter() - start}
    )
    logging.warning("%s seed %d: %s", label, seed, runs[-1])
  return {"label": label, "runs": runs}


def _mean_std(values) -> str:
  values = np.asarray(values, np.float64)
  std = values.std(ddof=1) if values.size > 1 else 0.0
  return f"{values.mean():.3f} ± {std:.3f}"


def format_table(rows: list[dict]) -> str:
  """Returns a Markdown table of the rows."""
  lines = [
    "| setting | epsilon | accuracy | balanced accuracy | client-mean "
    "accuracy |",
    "|---|---|---|---|---|",
  ]
  for row in rows:
    runs = row["runs"]
    epsilons = [r["epsilon"] for r in runs if r["epsilon"] is not None]
    epsilon = f"{max(epsilons):.3f}" if epsilons else "∞ (no DP)"
    lines.append(
      f"| {row['label']} | {epsilon} | "
      f"{_mean_std([r['accuracy'] for r in runs])} | "
      f"{_mean_std([r['balanced_accuracy'] for r in runs])} | "
      f"{_mean_std([r['client_mean_accuracy'] for r in runs])} |"
    )
  return "\n".join(lines)


def run_benchmark(seeds, epsilons, num_rounds, quick, workdir) -> list[dict]:
  """Runs every setting and returns the rows in table order."""
  rows = [
    run_setting(
      "pooled real",
      lambda: reference_config("pooled", num_rounds),
      seeds,
      workdir,
    ),
    run_setting(
      "FedAvg real",
      lambda: reference_config("fedavg", num_rounds),
      seeds,
      workdir,
    ),
    run_setting(
      "FedHypeVAE no DP",
      lambda: fedhypevae_config(None, num_rounds, quick),
      seeds,
      workdir,
    ),
  ]
  for epsilon in epsilons:
    rows.append(
      run_setting(
        f"FedHypeVAE eps={epsilon:g}",
        lambda epsilon=epsilon: fedhypevae_config(epsilon, num_rounds, quick),
        seeds,
        workdir,
      )
    )
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  pylogging.getLogger("tensorboardX.x2num").setLevel(pylogging.ERROR)
  seeds = [int(s) for s in _SEEDS.value]
  epsilons = [float(e) for e in _EPSILONS.value]
  num_rounds = _NUM_ROUNDS.value
  if _QUICK.value:
    seeds, epsilons, num_rounds = [0], [3.0], 2
  command = "python " + shlex.join(sys.argv)

  start = time.perf_counter()
  if _WORKDIR.value is None:
    with tempfile.TemporaryDirectory() as workdir:
      rows = run_benchmark(seeds, epsilons, num_rounds, _QUICK.value, workdir)
  else:
    rows = run_benchmark(
      seeds, epsilons, num_rounds, _QUICK.value, _WORKDIR.value
    )
  base = load_config_file(CONFIG_PATH)
  table = format_table(rows)
  payload = {
    "metadata": run_metadata.collect_metadata(
      command, (*run_metadata.DEFAULT_PACKAGES, "dp-accounting")
    ),
    "settings": {
      "config": str(CONFIG_PATH.relative_to(ROOT)),
      "delta": base.privacy.delta,
      "num_rounds": num_rounds or base.num_rounds,
      "seeds": seeds,
      "epsilons": epsilons,
      "quick": _QUICK.value,
    },
    "rows": rows,
    "table": table,
    "total_seconds": time.perf_counter() - start,
  }
  output = os.path.abspath(_OUTPUT.value)
  os.makedirs(os.path.dirname(output), exist_ok=True)
  write_json(output, payload)
  print(table)
  print(f"Command: {command}")
  print(f"Machine: {payload['metadata']['machine']}")
  print(f"Results: {output}")


if __name__ == "__main__":
  app.run(main)
