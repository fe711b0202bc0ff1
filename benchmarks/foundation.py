"""Federated fine-tuning of all-MiniLM-L6-v2 on clinical sentences.

Every Fed-Heart-Disease record is rendered as a clinical sentence
(`fedjax_med.data.heart_disease_text`) and classified by the pretrained
all-MiniLM-L6-v2 encoder with a dense head, trained with FedAvg across the
four hospitals, all four every round. Methods (configs in `configs/`):

- "lora": LoRA rank 8 on the attention query and value projections
  (`fed_heart_disease_lora.py`).
- "prompt": 8 soft prompt vectors (`fed_heart_disease_prompt.py`).
- "scl": Sequential Compression Layers of width 32, a reconstruction
  (`fed_heart_disease_scl.py`).
- "full": every weight of the encoder and the head trained and sent, at
  client learning rate 1e-4 (the adapters use 3e-3, which would move
  pretrained weights far); neither rate was tuned.
- "tabular_lr": the tabular logistic regression of
  `fed_heart_disease.py` (50 rounds of 10 local SGD steps), on the same
  hospitals, patients and split.

A seed sets the initialization of the head and adapters and the round
keys (minibatch order). For each method the script reports the pooled test
accuracy and AUROC after the last round (mean and sample standard
deviation over seeds), the exact uplink and downlink bytes of one round
(from the round's `uplink_bytes` and `downlink_bytes` metrics), the ratio
of full fine-tuning's uplink to each method's, and the seconds per round
after compilation.

Run from the repository root:
  python benchmarks/foundation.py
  python benchmarks/foundation.py --quick --output=/tmp/quick.json
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging

from fedjax_med.training import experiment, run_metadata
from fedjax_med.training.config_files import load_config_file
from fedjax_med.training.evaluation import evaluate, make_predict_fn

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
METHODS = ("lora", "prompt", "scl", "full", "tabular_lr")
DISPLAY_NAMES = {
  "lora": "MiniLM + LoRA (r=8, query/value)",
  "prompt": "MiniLM + soft prompts (8)",
  "scl": "MiniLM + SCL (r=32, reconstruction)",
  "full": "MiniLM, full fine-tuning",
  "tabular_lr": "Tabular logistic regression",
}
FULL_LEARNING_RATE = 1e-4
QUICK_METHODS = ("lora", "tabular_lr")
QUICK_ROUNDS = 2
# The quick run keeps one pretrained layer and 24 tokens, so that it tests
# the script's code path in seconds; its numbers mean nothing.
QUICK_MODEL = {"num_layers": 1}
QUICK_MAX_LENGTH = 24

_METHODS = flags.DEFINE_list(
  "methods", list(METHODS), f"Comma-separated methods: any of {METHODS}."
)
_SEEDS = flags.DEFINE_list(
  "seeds", ["0", "1", "2"], "Comma-separated integer seeds."
)
_NUM_ROUNDS = flags.DEFINE_integer(
  "num_rounds",
  None,
  "Rounds of every MiniLM method; unset uses the configs' 15. The tabular "
  "baseline keeps its config's 50.",
)
_OUTPUT = flags.DEFINE_string(
  "output",
  "benchmarks/results/foundation.json",
  "Path of the JSON results file.",
)
_RESUME = flags.DEFINE_bool(
  "resume",
  False,
  "Keep the runs already in --output and train only the (method, seed) "
  "pairs it lacks.",
)
_QUICK = flags.DEFINE_bool(
  "quick",
  False,
  f"Smoke run: seed 0, {QUICK_ROUNDS} rounds, methods "
  f"{','.join(QUICK_METHODS)}, one encoder layer, {QUICK_MAX_LENGTH} "
  "tokens. Flags passed explicitly still apply.",
)


def method_config(
  method: str, quick: bool = False
) -> ml_collections.ConfigDict:
  """Returns the config that the benchmark runs for `method`."""
  if method not in METHODS:
    raise ValueError(f"method {method!r} is unknown; use one of {METHODS}.")
  if method == "tabular_lr":
    config = load_config_file(CONFIG_DIR / "fed_heart_disease.py")
  elif method == "full":
    config = load_config_file(CONFIG_DIR / "fed_heart_disease_lora.py")
    config.model.peft = "full"
    config.client.learning_rate = FULL_LEARNING_RATE
  else:
    config = load_config_file(CONFIG_DIR / f"fed_heart_disease_{method}.py")
  if quick and method != "tabular_lr":
    config.model.update(QUICK_MODEL)
    config.data.max_length = QUICK_MAX_LENGTH
  config.progress_bar = False
  return config


def run_once(method: str, seed: int, num_rounds: int | None, quick: bool):
  """Trains one method for one seed; returns accuracy, bytes and times."""
  config = method_config(method, quick)
  config.seed = seed
  if num_rounds is not None and method != "tabular_lr":
    config.num_rounds = num_rounds
  data = experiment.load_data(config)
  model = experiment.build_model(config, data)
  algorithm = experiment.build_algorithm(config, model, data)

  init_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
  variables = model.init(init_key, jnp.asarray(data.train.x[0, :1]))
  state = algorithm.init(init_key, variables)
  run_round = jax.jit(algorithm.run_round)
  device_data = jax.device_put(data)

  round_seconds, uplink, downlink = [], [], []
  for r in range(config.num_rounds):
    start = time.perf_counter()
    state, metrics = run_round(
      state, device_data, jax.random.fold_in(run_key, r)
    )
    metrics = jax.device_get(metrics)
    round_seconds.append(time.perf_counter() - start)
    uplink.append(int(round(float(metrics["uplink_bytes"]))))
    downlink.append(int(round(float(metrics["downlink_bytes"]))))

  start = time.perf_counter()
  result = evaluate(
    make_predict_fn(model),
    algorithm.global_variables(state),
    data.test,
    data.client_names,
  )
  eval_seconds = time.perf_counter() - start
  steady = round_seconds[1:] or round_seconds
  return {
    "seed": seed,
    "num_rounds": config.num_rounds,
    "pooled_accuracy": result["pooled"]["accuracy"],
    "pooled_auroc": result["pooled"]["auroc"],
    "per_client_accuracy": {
      name: metrics["accuracy"]
      for name, metrics in result["per_client"].items()
    },
    "uplink_bytes_per_round": uplink[0],
    "downlink_bytes_per_round": downlink[0],
    "trainable_params": int(
      sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(state.params))
    ),
    "first_round_seconds": round_seconds[0],
    "seconds_per_round": float(np.median(steady)),
    "eval_seconds": eval_seconds,
  }


def _mean_std(values) -> str:
  values = np.asarray(values, np.float64)
  std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
  return f"{np.mean(values):.3f} ± {std:.3f}"


def format_table(results: dict[str, dict]) -> str:
  """Returns the Markdown table of accuracy, bytes and time per method."""
  full_uplink = None
  if "full" in results:
    full_uplink = results["full"]["runs"][0]["uplink_bytes_per_round"]
  lines = [
    "| method | trainable params | pooled accuracy | pooled AUROC | "
    "uplink bytes / round | downlink bytes / round | full / this uplink | "
    "s / round |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for method, result in results.items():
    runs = result["runs"]
    first = runs[0]
    ratio = "n/a"
    # The ratio compares fine-tuning methods of one encoder only.
    if full_uplink is not None and method != "tabular_lr":
      ratio = f"{full_uplink / first['uplink_bytes_per_round']:.1f}"
    seconds = np.median([run["seconds_per_round"] for run in runs])
    lines.append(
      f"| {DISPLAY_NAMES[method]} | {first['trainable_params']:,} | "
      f"{_mean_std([run['pooled_accuracy'] for run in runs])} | "
      f"{_mean_std([run['pooled_auroc'] for run in runs])} | "
      f"{first['uplink_bytes_per_round']:,} | "
      f"{first['downlink_bytes_per_round']:,} | {ratio} | {seconds:.2f} |"
    )
  return "\n".join(lines)


def _resolve_options() -> tuple[list[str], list[int], int | None]:
  methods = list(_METHODS.value)
  seeds = [int(s) for s in _SEEDS.value]
  num_rounds = _NUM_ROUNDS.value
  if _QUICK.value:
    if not flags.FLAGS["methods"].present:
      methods = list(QUICK_METHODS)
    if not flags.FLAGS["seeds"].present:
      seeds = [0]
    if num_rounds is None:
      num_rounds = QUICK_ROUNDS
  unknown = sorted(set(methods) - set(METHODS))
  if unknown:
    raise app.UsageError(f"Unknown methods {unknown}; use any of {METHODS}.")
  return methods, seeds, num_rounds


def _write(output, command, results, total_seconds):
  table = format_table(results)
  metadata = run_metadata.collect_metadata(
    command, (*run_metadata.DEFAULT_PACKAGES, "safetensors", "tokenizers")
  )
  experiment.write_json(
    output,
    {
      "metadata": metadata,
      "quick": _QUICK.value,
      "seeds": sorted(
        {run["seed"] for r in results.values() for run in r["runs"]}
      ),
      "results": results,
      "table": table,
      "total_seconds": total_seconds,
    },
  )
  return metadata, table, total_seconds


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  methods, seeds, num_rounds = _resolve_options()
  logging.set_verbosity(logging.WARNING)
  command = "python " + shlex.join(sys.argv)

  start = time.perf_counter()
  output = os.path.abspath(_OUTPUT.value)
  os.makedirs(os.path.dirname(output), exist_ok=True)
  results = {}
  if _RESUME.value and os.path.exists(output):
    with open(output) as f:
      results = json.load(f)["results"]
  for method in methods:
    runs = results.get(method, {}).get("runs", [])
    done = {run["seed"] for run in runs}
    for seed in seeds:
      if seed in done:
        continue
      run_start = time.perf_counter()
      run = run_once(method, seed, num_rounds, _QUICK.value)
      run["seconds"] = time.perf_counter() - run_start
      runs.append(run)
      print(
        f"{method} seed {seed}: pooled accuracy "
        f"{run['pooled_accuracy']:.4f}, uplink "
        f"{run['uplink_bytes_per_round']:,} bytes/round, "
        f"{run['seconds_per_round']:.2f} s/round ({run['seconds']:.1f} s)",
        flush=True,
      )
      results[method] = {
        "config": method_config(method, _QUICK.value).to_dict(),
        "runs": runs,
      }
      # Written after every run, so a stopped run keeps what it finished.
      _write(output, command, results, time.perf_counter() - start)
  metadata, table, total_seconds = _write(
    output, command, results, time.perf_counter() - start
  )

  machine = metadata["machine"]
  print()
  print(table)
  print()
  print(
    f"{metadata['date']}, {machine['cpu_model']}, "
    f"{total_seconds:.0f} s in all; written to {output}"
  )


if __name__ == "__main__":
  app.run(main)
