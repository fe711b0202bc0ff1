"""Seconds per compiled round with and without differential privacy.

`time_workload(name, ...)` builds three rounds of one workload through the
registry: plain (`privacy.mode = "none"`), client-level DP (DP-FedAvg,
uniform weighting) and example-level DP (DP-SGD), both DP modes at noise
multiplier 1 and the config's clip norm. It jit-compiles each, runs
`warmup_rounds` untimed rounds (the first compiles) and then
`timed_rounds` timed ones with `jax.block_until_ready`, the three modes in
turn, and reports the median seconds per round and each DP mode's ratio to
the plain round. The targets, on CPU, are a client-level round at most 1.5
times a plain round and an example-level round at most 3 times.

Workloads:
  fed_heart_disease  `configs/fed_heart_disease_dp_sgd.py`: the four
                     hospitals, logistic regression, 10 local steps of
                     batch 8.
  digits             `configs/digits_dp_fedavg.py`: 300 clients, Poisson
                     cohorts of expected size 30 in 300 slots run in chunks
                     of 100, logistic regression, 4 local steps of batch 4.
                     Its client-level round keeps the config's adaptive
                     clipping, and its example-level round turns it off.

`benchmarks/privacy_tradeoff.py` imports this module and runs the timing in
the same run as its accuracy sweep.
"""

from __future__ import annotations

import pathlib
import statistics
import time

import jax
import jax.numpy as jnp

from fedjax_med.algorithms.registry import build_algorithm
from fedjax_med.training.config_files import load_config_file
from fedjax_med.training.experiment import build_model, load_data

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKLOAD_CONFIGS = {
  "fed_heart_disease": ROOT / "configs" / "fed_heart_disease_dp_sgd.py",
  "digits": ROOT / "configs" / "digits_dp_fedavg.py",
}
MODES = ("none", "client", "example")
OVERHEAD_TARGETS = {"client": 1.5, "example": 3.0}


def build_round(config_path: pathlib.Path, mode: str):
  """Returns the jitted round, its state and data for one privacy mode."""
  config = load_config_file(config_path)
  config.privacy.mode = mode
  config.privacy.target_epsilon = 0.0
  config.privacy.noise_multiplier = 1.0
  if mode == "client":
    config.cohort.weighting = "uniform"
  if mode == "example":
    config.privacy.adaptive_clipping = False
  data = load_data(config)
  model = build_model(config, data)
  algorithm = build_algorithm(config, model, data)
  key = jax.random.PRNGKey(0)
  params = model.init(key, jnp.asarray(data.train.x[0, :1]))
  return (
    jax.jit(algorithm.run_round),
    algorithm.init(key, params),
    (jax.device_put(data)),
  )


def time_workload(name: str, timed_rounds: int, warmup_rounds: int) -> dict:
  """Times the three modes in turn and returns medians and ratios."""
  rounds = {mode: build_round(WORKLOAD_CONFIGS[name], mode) for mode in MODES}
  states = {mode: parts[1] for mode, parts in rounds.items()}
  seconds = {mode: [] for mode in MODES}
  first = {}
  for index in range(warmup_rounds + timed_rounds):
    # Alternating the modes spreads load from other processes over all
    # three instead of one.
    for mode, (round_fn, _, data) in rounds.items():
      start = time.perf_counter()
      state, metrics = round_fn(states[mode], data, jax.random.PRNGKey(index))
      jax.block_until_ready((state, metrics))
      elapsed = time.perf_counter() - start
      states[mode] = state
      if index == 0:
        first[mode] = elapsed
      elif index >= warmup_rounds:
        seconds[mode].append(elapsed)
  median = {mode: statistics.median(seconds[mode]) for mode in MODES}
  ratios = {mode: median[mode] / median["none"] for mode in OVERHEAD_TARGETS}
  return {
    "median_seconds": median,
    "first_round_seconds": first,
    "ratios": ratios,
    "targets": {
      mode: {"max_ratio": limit, "passed": bool(ratios[mode] <= limit)}
      for mode, limit in OVERHEAD_TARGETS.items()
    },
    "timed_rounds": timed_rounds,
  }


def format_overhead_table(overhead: dict) -> str:
  lines = [
    "| workload | plain (ms) | client-level DP (ms) | example-level DP (ms) "
    "| client / plain | example / plain |",
    "|---|---|---|---|---|---|",
  ]
  for name, result in overhead.items():
    ms = {mode: 1e3 * s for mode, s in result["median_seconds"].items()}
    verdicts = []
    for mode in OVERHEAD_TARGETS:
      status = "holds" if result["targets"][mode]["passed"] else "FAILS"
      verdicts.append(f"{result['ratios'][mode]:.2f} ({status})")
    lines.append(
      f"| {name} | {ms['none']:.2f} | {ms['client']:.2f} | "
      f"{ms['example']:.2f} | " + " | ".join(verdicts) + " |"
    )
  return "\n".join(lines)
