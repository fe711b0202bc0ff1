r"""Fed-Heart-Disease accuracy against epsilon under DP-SGD, and DP's cost.

Accuracy: for each target epsilon (default 0.5, 1, 2, 4, 8) and without
DP, `configs/fed_heart_disease_dp_sgd.py` runs once per seed through
`run_experiment`. That config is example-level DP-SGD across the four
hospitals, with Poisson batches, add/remove adjacency of records, the RDP
accountant and delta = 1e-3, below one over the smallest hospital's 30
training records. The noise multiplier is calibrated for each target, and
the row without DP runs the same settings with `privacy.mode = "none"`. The
table reports the pooled test accuracy (mean and sample standard deviation
over seeds), the epsilon spent and the noise multiplier.

Audits at each setting (`fedjax_med.privacy.audit`):
  * membership AUC: a loss-threshold attack on a model trained with the
    setting (every training record a member, every test record a
    non-member), through `membership_audit`. It retrains with the setting's
    calibrated noise multiplier and the experiment loop's key schedule, but
    with the training rows in another order, so it is a model of the same
    setting and not the benchmark run's own model.
  * overfit AUC: the same attack on the audit's overfitting target, an MLP
    trained on 10 records per hospital (`overfit_config`). Its noise
    multiplier is calibrated to the same epsilon and delta for its own
    sampling rates, so the row's epsilon holds for it too.
  * inversion MSE: a gradient-inversion attack on the update of one record
    (batch size 1) at the untrained model: its DP-SGD step at the setting's
    clip norm and noise multiplier, or its plain gradient without DP. The
    error is in standardized features. Guessing the mean record, which uses
    no update, scores the "baseline" MSE.

Overhead (`benchmarks/privacy_overhead.py`): seconds per compiled round of
a plain round, a client-level DP round (DP-FedAvg) and an example-level DP
round (DP-SGD) on the same workload, as the median of `--timed_rounds`
rounds after a warm-up. The workloads are the DP-SGD config's round
("fed_heart_disease") and the cross-device round of
`configs/digits_dp_fedavg.py` ("digits"). The targets are a client-level
round at most 1.5 times a plain round and an example-level round at most 3
times, on CPU.

Run from the repository root:
  python benchmarks/privacy_tradeoff.py
  python benchmarks/privacy_tradeoff.py --quick --output=/tmp/quick.json \
      --plot=/tmp/quick.png
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
from matplotlib.figure import Figure

# A sibling file: running this script puts its directory on sys.path.
from privacy_overhead import (
  WORKLOAD_CONFIGS,
  format_overhead_table,
  time_workload,
)

from fedjax_med.privacy import audit
from fedjax_med.privacy.calibration import calibrate_noise_multiplier
from fedjax_med.training import privacy_budget, run_metadata
from fedjax_med.training.config_files import load_config_file
from fedjax_med.training.experiment import (
  load_data,
  run_experiment,
  write_json,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_PATH = ROOT / "configs" / "fed_heart_disease_dp_sgd.py"
NO_DP = "no DP"
OVERFIT_MEMBERS_PER_CLIENT = 10

_EPSILONS = flags.DEFINE_list(
  "epsilons", ["0.5", "1", "2", "4", "8"], "Target epsilons to sweep."
)
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every setting.")
_NUM_ROUNDS = flags.DEFINE_integer(
  "num_rounds", None, "Rounds per run; default: the config's."
)
_AUDIT = flags.DEFINE_bool(
  "audit", True, "Run the membership and gradient-inversion audits."
)
_WORKLOADS = flags.DEFINE_list(
  "workloads", list(WORKLOAD_CONFIGS), "Workloads of the overhead timing."
)
_TIMED_ROUNDS = flags.DEFINE_integer(
  "timed_rounds", 30, "Timed rounds per mode after the warm-up."
)
_WARMUP_ROUNDS = flags.DEFINE_integer(
  "warmup_rounds", 3, "Untimed rounds per mode, the first one compiling."
)
_QUICK = flags.DEFINE_bool(
  "quick",
  False,
  "A small run for tests: one epsilon, one seed, 2 rounds, "
  "short audits and timing on fed_heart_disease only. Flags passed "
  "explicitly still apply.",
)
_OUTPUT = flags.DEFINE_string(
  "output",
  str(ROOT / "benchmarks" / "results" / "privacy_tradeoff.json"),
  "Where to write the JSON results.",
)
_PLOT = flags.DEFINE_string(
  "plot",
  str(ROOT / "benchmarks" / "results" / "privacy_tradeoff.png"),
  "Where to write the PNG plot.",
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for the runs; default: a temporary one."
)

# --quick values of the flags not passed on the command line.
QUICK_FLAGS = {
  "epsilons": ["2"],
  "seeds": ["0"],
  "num_rounds": 2,
  "workloads": ["fed_heart_disease"],
  "timed_rounds": 5,
  "warmup_rounds": 2,
}
# Attack settings: (Adam steps, restarts, rounds of the overfit target).
FULL_AUDIT = (1000, 4, 50)
QUICK_AUDIT = (50, 1, 2)


def resolve_options() -> dict:
  """Returns the flag values, with --quick defaults for unpassed flags."""
  options = {
    name: flags.FLAGS[name].value
    for name in ("epsilons", "seeds", "num_rounds", "workloads")
  }
  options["timed_rounds"] = _TIMED_ROUNDS.value
  options["warmup_rounds"] = _WARMUP_ROUNDS.value

  if _QUICK.value:
    for name, value in QUICK_FLAGS.items():
      if not flags.FLAGS[name].present:
        options[name] = value

  try:
    options["epsilons"] = [float(e) for e in options["epsilons"]]
    options["seeds"] = [int(s) for s in options["seeds"]]
  except ValueError as error:
    raise app.UsageError(
      f"--epsilons or --seeds is invalid ({error}); pass numbers, e.g. "
      "--epsilons=0.5,1,2 --seeds=0,1,2."
    ) from error
  if not options["seeds"] or any(e <= 0 for e in options["epsilons"]):
    raise app.UsageError(
      "--seeds must be non-empty and every --epsilons value positive."
    )
  unknown = set(options["workloads"]) - set(WORKLOAD_CONFIGS)
  if unknown:
    raise app.UsageError(
      f"--workloads contains {sorted(unknown)}; use any of "
      f"{','.join(WORKLOAD_CONFIGS)}."
    )
  if options["timed_rounds"] < 1 or options["warmup_rounds"] < 1:
    raise app.UsageError("--timed_rounds and --warmup_rounds must be >= 1.")
  options["audit_scale"] = QUICK_AUDIT if _QUICK.value else FULL_AUDIT
  return options


def setting_config(epsilon: float | None, seed: int, num_rounds: int | None):
  """Returns the DP-SGD config at `epsilon`, or without DP for None."""
  config = load_config_file(CONFIG_PATH)
  config.seed = seed
  config.progress_bar = False
  if num_rounds is not None:
    config.num_rounds = num_rounds
    config.eval_every = num_rounds
    config.checkpoint_every = num_rounds
  if epsilon is None:
    config.privacy.mode = "none"
  else:
    config.privacy.target_epsilon = epsilon
  return config


def overfit_noise_multiplier(
  epsilon: float, delta: float, seed: int, num_rounds: int
) -> float:
  """Calibrates the overfit target's noise multiplier to `epsilon`."""
  config = overfit_target_config(seed, num_rounds)
  data = audit.split_members(
    load_data(config), OVERFIT_MEMBERS_PER_CLIENT, seed
  )
  with config.unlocked():
    config.privacy.mode = "example"
  specs = privacy_budget.build_privacy_specs(config, data, None)
  return calibrate_noise_multiplier(epsilon, specs, delta)


def overfit_target_config(seed: int, num_rounds: int):
  config = audit.overfit_config()
  config.seed = seed
  config.num_rounds = num_rounds
  # Poisson batches and add/remove adjacency, as in the benchmark's config.
  config.privacy.batch_sampling = "poisson"
  config.privacy.adjacency = "add_remove"
  return config


def audit_setting(
  final: dict, seed: int, delta: float, scale: tuple[int, int, int]
) -> dict:
  """Runs the three audits for the setting of one finished run."""
  num_steps, num_restarts, overfit_rounds = scale
  mode = final["config"]["privacy"]["mode"]
  noise_multiplier = final.get("noise_multiplier") or 0.0
  clip_norm = final["config"]["privacy"]["clip_norm"]

  config = load_config_file(CONFIG_PATH)
  config.seed = seed
  config.num_rounds = final["rounds"]
  config.privacy.mode = mode
  config.privacy.noise_multiplier = noise_multiplier
  membership = audit.membership_audit(config, members_per_client=None)

  overfit = overfit_target_config(seed, overfit_rounds)
  if mode == "example":
    overfit.privacy.mode = "example"
    overfit.privacy.noise_multiplier = overfit_noise_multiplier(
      final["epsilon"], delta, seed, overfit_rounds
    )
  overfit_membership = audit.membership_audit(
    overfit, members_per_client=OVERFIT_MEMBERS_PER_CLIENT
  )

  inversion = audit.inversion_audit(
    audit.AuditSetting(
      mode=mode,
      clip_norm=clip_norm,
      noise_multiplier=noise_multiplier,
      batch_sizes=(1,),
      inversion_datasets=("fed_heart_disease",),
      num_inversion_steps=num_steps,
      num_restarts=num_restarts,
      membership=False,
      seed=seed,
    )
  )
  prefix = "inversion/fed_heart_disease/batch_1"
  return {
    "membership_auc": membership["auc"],
    "overfit_membership_auc": overfit_membership["auc"],
    "overfit_noise_multiplier": overfit.privacy.noise_multiplier
    if mode == "example"
    else 0.0,
    "inversion_mse": inversion[f"{prefix}/mse"],
    "inversion_baseline_mse": inversion[f"{prefix}/baseline_mse"],
  }


def run_setting(epsilon: float | None, options: dict, workdir: str) -> dict:
  """Runs one setting for every seed and summarizes its columns."""
  label = NO_DP if epsilon is None else f"{epsilon:g}"
  runs = []
  for seed in options["seeds"]:
    config = setting_config(epsilon, seed, options["num_rounds"])
    start = time.perf_counter()
    final = run_experiment(config, os.path.join(workdir, label, str(seed)))
    run = {
      "seed": seed,
      "pooled_accuracy": final["pooled_test_accuracy"],
      "epsilon": final.get("epsilon"),
      "noise_multiplier": final.get("noise_multiplier"),
      "rounds": final["rounds"],
      "stopped_at_budget": final.get("stopped_at_budget"),
    }
    if options["audit"]:
      run.update(
        audit_setting(final, seed, config.privacy.delta, options["audit_scale"])
      )
    run["seconds"] = time.perf_counter() - start
    runs.append(run)
    print(
      f"epsilon {label} seed {seed}: pooled accuracy "
      f"{run['pooled_accuracy']:.4f} ({run['seconds']:.1f} s)",
      flush=True,
    )
  columns = [k for k in runs[0] if k not in ("seed", "stopped_at_budget")]
  summary = {}
  for column in columns:
    values = [run[column] for run in runs]
    if any(value is None for value in values):
      continue
    summary[column] = {
      "mean": float(np.mean(values)),
      "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
    }
  return {
    "label": label,
    "target_epsilon": epsilon,
    "runs": runs,
    "summary": summary,
  }


def _cell(
  summary: dict, column: str, digits: int = 3, with_std: bool = True
) -> str:
  if column not in summary:
    return "n/a"
  cell = summary[column]
  if cell["std"] is None or not with_std:
    return f"{cell['mean']:.{digits}f}"
  return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"


def format_accuracy_table(rows: list[dict], with_audit: bool) -> str:
  header = ["target epsilon", "pooled accuracy", "epsilon spent", "noise mult."]
  if with_audit:
    header += ["membership AUC", "overfit AUC", "inversion MSE"]
  lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
  for row in rows:
    summary = row["summary"]
    cells = [
      row["label"],
      _cell(summary, "pooled_accuracy"),
      _cell(summary, "epsilon", 2, with_std=False),
      _cell(summary, "noise_multiplier", 2, with_std=False),
    ]
    if with_audit:
      cells += [
        _cell(summary, "membership_auc"),
        _cell(summary, "overfit_membership_auc"),
        _cell(summary, "inversion_mse"),
      ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot_results(
  rows: list[dict], path: str, with_audit: bool, delta: float
) -> None:
  """Plots accuracy (and the audits) against epsilon, no DP as a line."""
  dp_rows = [row for row in rows if row["target_epsilon"] is not None]
  no_dp = next(row for row in rows if row["target_epsilon"] is None)
  epsilons = [row["summary"]["epsilon"]["mean"] for row in dp_rows]
  panels = [("pooled_accuracy", "pooled test accuracy")]
  if with_audit:
    panels += [
      ("membership_auc", "membership AUC, benchmark model"),
      ("overfit_membership_auc", "membership AUC, overfit target"),
      ("inversion_mse", "inversion MSE, one record"),
    ]

  num_columns = min(len(panels), 2)
  num_rows = -(-len(panels) // num_columns)
  fig = Figure(figsize=(5.0 * num_columns, 3.6 * num_rows))
  axes = fig.subplots(num_rows, num_columns, squeeze=False).ravel()
  for ax, (column, title) in zip(axes, panels, strict=True):
    means = [row["summary"][column]["mean"] for row in dp_rows]
    stds = [row["summary"][column]["std"] or 0.0 for row in dp_rows]
    ax.errorbar(
      epsilons, means, yerr=stds, marker="o", capsize=3, label="DP-SGD"
    )
    ax.axhline(
      no_dp["summary"][column]["mean"], color="gray", ls="--", label=NO_DP
    )
    if column == "inversion_mse":
      baseline = no_dp["summary"]["inversion_baseline_mse"]["mean"]
      ax.axhline(baseline, color="tab:red", ls=":", label="mean-record guess")
    if column.endswith("auc"):
      ax.axhline(0.5, color="tab:red", ls=":", label="chance")
    ax.set_xscale("log")
    ax.set_xticks(epsilons, labels=[row["label"] for row in dp_rows])
    ax.minorticks_off()
    ax.set_xlabel(f"epsilon (delta = {delta:g})")
    ax.set_title(title)
    ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)


def collect_metadata(command: str) -> dict:
  """Returns the command, library versions and machine of this run."""
  return run_metadata.collect_metadata(
    command, (*run_metadata.DEFAULT_PACKAGES, "dp-accounting")
  )


def run_benchmark(options: dict, workdir: str) -> dict:
  rows = [run_setting(None, options, workdir)]
  for epsilon in options["epsilons"]:
    rows.append(run_setting(epsilon, options, workdir))
  overhead = {
    name: time_workload(name, options["timed_rounds"], options["warmup_rounds"])
    for name in options["workloads"]
  }
  return {"rows": rows, "overhead": overhead}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  options = resolve_options()
  options["audit"] = _AUDIT.value
  logging.set_verbosity(logging.WARNING)
  # Switzerland's test split contains one class, so its AUROC is NaN at
  # every evaluation and tensorboardX warns each time it writes it.
  pylogging.getLogger("tensorboardX.x2num").setLevel(pylogging.ERROR)
  command = "python " + shlex.join(sys.argv)

  start = time.perf_counter()
  if _WORKDIR.value is None:
    with tempfile.TemporaryDirectory() as workdir:
      results = run_benchmark(options, workdir)
  else:
    results = run_benchmark(options, _WORKDIR.value)
  total_seconds = time.perf_counter() - start

  table = format_accuracy_table(results["rows"], options["audit"])
  overhead_table = format_overhead_table(results["overhead"])
  base = load_config_file(CONFIG_PATH)
  payload = {
    "metadata": collect_metadata(command),
    "settings": {
      "config": str(CONFIG_PATH.relative_to(ROOT)),
      "delta": base.privacy.delta,
      "num_rounds": options["num_rounds"] or base.num_rounds,
      "seeds": options["seeds"],
      "epsilons": options["epsilons"],
      "audit": options["audit"],
      "audit_scale": dict(
        zip(
          ("inversion_steps", "restarts", "overfit_rounds"),
          options["audit_scale"],
          strict=True,
        )
      ),
    },
    "rows": results["rows"],
    "overhead": results["overhead"],
    "table": table,
    "overhead_table": overhead_table,
    "total_seconds": total_seconds,
  }
  output = os.path.abspath(_OUTPUT.value)
  os.makedirs(os.path.dirname(output), exist_ok=True)
  write_json(output, payload)
  plot_results(
    results["rows"], _PLOT.value, options["audit"], base.privacy.delta
  )

  print()
  print(
    f"Fed-Heart-Disease under DP-SGD, delta = {base.privacy.delta:g}, mean ± "
    f"std over seeds {options['seeds']}:"
  )
  print()
  print(table)
  print()
  print("Seconds per compiled round (median), and the overhead targets:")
  print()
  print(overhead_table)
  print()
  metadata = payload["metadata"]
  print(f"Command: {command}")
  print(f"Versions: {metadata['versions']}")
  print(f"Machine: {metadata['machine']}")
  print(f"Results: {output}; plot: {os.path.abspath(_PLOT.value)}")


if __name__ == "__main__":
  app.run(main)
