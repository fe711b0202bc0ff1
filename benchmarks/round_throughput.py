r"""Seconds per round: the compiled round against loops over clients.

For each workload the script times three ways of running the same FedAvg
round (same model, clients, cohort, client keys, batches, local steps, client
SGD and server step):

  compiled     `jax.jit(fedavg(...).run_round)`: one program for the whole
               round (cohort sampling, local training of every sampled
               client vmapped, the chunked weighted sum, the server step).
  fedjax_loop  the design of FedJAX's default engine
               (`ForEachClientJitBackend`): jit-compiled client init, step
               and final functions, Python loops over the clients and over
               each client's batches, batches sliced from host arrays. The
               targets compare against this way.
  loop         a stronger baseline: one jit-compiled `local_train` call per
               client with every local step inside, the data on the device
               once, and the deltas averaged in a few stacked jnp ops. It
               shows what per-client dispatch alone costs.

All three start from the same parameters with the same round key; the script
checks that one round of each gives the same parameters to a float
tolerance. The first round of each way includes compilation and is reported
separately. Then `--rounds` more rounds are timed with
`jax.block_until_ready`, the ways taking turns, and the median is reported.
The loops live in `benchmarks/client_loops.py`.

Workloads (defaults):
  mlp          2-layer MLP (one hidden layer of 64) on digits features
               (64-dim, 10 classes), IID over 1000 clients, all 1000 per
               round, 50 clients per chunk.
  cnn_patches  the zoo CNN, convolution as image patches times a matrix, on
               8x8x1 digits, IID over 32 clients, all 32 per round.
  cnn_lax      the same CNN with `lax.conv_general_dilated`, whose vmap over
               per-client kernels becomes a grouped convolution.
Every workload runs 4 local steps of batch 16.

Run from the repository root:
  python benchmarks/round_throughput.py
  python benchmarks/round_throughput.py --quick --output=/tmp/quick.json
"""

from __future__ import annotations

import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging

# A sibling file: running this script puts its directory on sys.path.
from client_loops import make_loop_round, make_step_loop_round

from fedjax_med.algorithms.fedavg import ClientConfig, CohortConfig, fedavg
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.data.partition import federate, iid_partition
from fedjax_med.data.sklearn_sources import load_digits_arrays
from fedjax_med.models.base import Model
from fedjax_med.models.registry import get_model
from fedjax_med.training import run_metadata
from fedjax_med.training.experiment import write_json

WORKLOADS = ("mlp", "cnn_patches", "cnn_lax")

# Minimum loop / compiled ratio per workload, stated for a 2-core CPU.
TARGETS = {"mlp": 10.0, "cnn_patches": 1.0}

# Sizes that --quick sets unless the flag is passed explicitly. The flags
# below without a module variable are read through `option`.
QUICK_VALUES = {
  "rounds": 2,
  "num_local_steps": 2,
  "batch_size": 4,
  "mlp_num_clients": 16,
  "mlp_clients_per_round": 16,
  "mlp_hidden_sizes": ["8", "8"],
  "cnn_num_clients": 4,
  "cnn_clients_per_round": 4,
  "cnn_channels": ["4", "8"],
}

flags.DEFINE_integer(
  "rounds", 5, "Timed rounds per way, after the first (compiling) round."
)
_OUTPUT = flags.DEFINE_string(
  "output",
  "benchmarks/results/round_throughput.json",
  "Path of the JSON results file.",
)
_QUICK = flags.DEFINE_bool(
  "quick",
  False,
  "Smoke run with tiny sizes; flags passed explicitly still apply.",
)
_WORKLOADS = flags.DEFINE_list(
  "workloads", list(WORKLOADS), f"Workloads to run, any of {WORKLOADS}."
)
flags.DEFINE_integer(
  "num_local_steps", 4, "Local SGD steps per client per round."
)
flags.DEFINE_integer("batch_size", 16, "Examples per step.")
_LEARNING_RATE = flags.DEFINE_float(
  "learning_rate", 0.1, "Client SGD learning rate."
)
# On a 2-core Xeon CPU (jax 0.10.2), the MLP round with 1000 clients ran
# about twice as fast with 20 to 50 clients per chunk as with the whole
# cohort at once, likely because the stacked weights of 1000 clients do not
# fit in cache. Chunks of 50 leave the 32-client CNN cohorts whole.
flags.DEFINE_integer(
  "clients_per_chunk",
  50,
  "Clients vmapped together in the compiled round; 0 means the whole cohort.",
)
flags.DEFINE_integer(
  "mlp_num_clients", 1000, "Clients the digits features are split into."
)
flags.DEFINE_integer(
  "mlp_clients_per_round", 1000, "Cohort size of the MLP workload."
)
# A 2-layer MLP: one hidden layer, then the output layer.
flags.DEFINE_list("mlp_hidden_sizes", ["64"], "Hidden layer widths of the MLP.")
flags.DEFINE_integer(
  "cnn_num_clients", 32, "Clients the digits images are split into."
)
flags.DEFINE_integer(
  "cnn_clients_per_round", 32, "Cohort size of the CNN workloads."
)
flags.DEFINE_list(
  "cnn_channels", ["16", "32"], "Output channels of each CNN block."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the split, init and rounds.")
_RTOL = flags.DEFINE_float(
  "rtol", 1e-4, "Relative tolerance of the equivalence check."
)
_ATOL = flags.DEFINE_float(
  "atol", 1e-5, "Absolute tolerance of the equivalence check."
)


class Workload(NamedTuple):
  """One model on one federated dataset.

  Attributes:
    name: One of `WORKLOADS`.
    model: The network.
    data: The clients, train split only.
    clients_per_round: Cohort size.
    description: Model and data settings recorded in the JSON.
  """

  name: str
  model: Model
  data: FederatedData
  clients_per_round: int
  description: dict[str, Any]


def option(name: str) -> Any:
  """Returns flag `name`, replaced by its --quick size unless passed."""
  value = flags.FLAGS[name].value
  if _QUICK.value and name in QUICK_VALUES and not flags.FLAGS[name].present:
    value = QUICK_VALUES[name]
  return value


def int_list(name: str) -> tuple[int, ...]:
  try:
    return tuple(int(v) for v in option(name))
  except ValueError as error:
    raise app.UsageError(
      f"--{name}={','.join(option(name))} is invalid; pass integers, e.g. "
      f"--{name}=64,64."
    ) from error


def digits_clients(as_images: bool, num_clients: int, seed: int):
  """Splits the 1797 digits IID into `num_clients` train-only clients."""
  source = load_digits_arrays(as_images=as_images)
  partitions = iid_partition(len(source.y), num_clients, seed)
  return federate(
    source.x,
    source.y,
    partitions,
    num_classes=source.num_classes,
    test_fraction=0.0,
    seed=seed,
    name="digits",
  )


def build_workload(name: str, seed: int) -> Workload:
  """Builds the model and data of workload `name` from the flags."""
  if name == "mlp":
    hidden_sizes = int_list("mlp_hidden_sizes")
    data = digits_clients(False, option("mlp_num_clients"), seed)
    model = get_model(
      "mlp",
      num_classes=data.num_classes,
      feature_shape=data.feature_shape,
      hidden_sizes=hidden_sizes,
    )
    description = {"model": "mlp", "hidden_sizes": hidden_sizes}
    clients_per_round = option("mlp_clients_per_round")
  else:
    conv_impl = name.removeprefix("cnn_")
    channels = int_list("cnn_channels")
    data = digits_clients(True, option("cnn_num_clients"), seed)
    model = get_model(
      "cnn",
      num_classes=data.num_classes,
      feature_shape=data.feature_shape,
      channels=channels,
      conv_impl=conv_impl,
    )
    description = {"model": "cnn", "channels": channels, "conv_impl": conv_impl}
    clients_per_round = option("cnn_clients_per_round")
  description.update(
    feature_shape=data.feature_shape,
    num_classes=data.num_classes,
    num_clients=data.num_clients,
    max_examples=data.train.max_examples,
  )
  return Workload(name, model, data, clients_per_round, description)


def time_alternating(
  runs: dict[str, Callable[[int], Any]], rounds: int
) -> dict[str, dict]:
  """Times round 0 of every way (with compilation), then rounds 1..`rounds`.

  The ways take turns within each round, so a change in background load
  during the run affects all of them alike.

  Args:
    runs: Maps a way's name to `run(round_index) -> arrays`, which must
      dispatch that round and return its results.
    rounds: Timed rounds after round 0.

  Returns:
    Per way: the median and every timed round's seconds, and round 0's.
  """

  def seconds(run, r):
    start = time.perf_counter()
    jax.block_until_ready(run(r))
    return time.perf_counter() - start

  first = {way: seconds(run, 0) for way, run in runs.items()}
  timed = {way: [] for way in runs}
  for r in range(1, rounds + 1):
    for way, run in runs.items():
      timed[way].append(seconds(run, r))
  return {
    way: {
      "median_seconds": statistics.median(timed[way]),
      "round_seconds": timed[way],
      "first_round_seconds": first[way],
    }
    for way in runs
  }


def max_abs_diff_and_close(a: Any, b: Any) -> tuple[float, bool]:
  """Returns the largest `|a - b|` over two pytrees and whether allclose."""
  max_abs_diff, close = 0.0, True
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    x, y = np.asarray(x), np.asarray(y)
    max_abs_diff = max(max_abs_diff, float(np.max(np.abs(x - y))))
    close &= bool(np.allclose(x, y, rtol=_RTOL.value, atol=_ATOL.value))
  return max_abs_diff, close


def run_workload(workload: Workload, client: ClientConfig, seed: int) -> dict:
  """Times both ways on one workload and checks that they agree."""
  data = jax.device_put(workload.data)
  num_clients = data.num_clients
  cohort = CohortConfig(
    workload.clients_per_round,
    clients_per_chunk=option("clients_per_chunk"),
  )
  algorithm = fedavg(workload.model, num_clients, client=client, cohort=cohort)
  compiled_round = jax.jit(algorithm.run_round)
  loop_args = (
    workload.model,
    num_clients,
    client,
    workload.clients_per_round,
    optax.sgd(1.0),  # fedavg's default server_learning_rate.
  )
  loop_round = make_loop_round(*loop_args)
  step_loop_round = make_step_loop_round(*loop_args)
  init_key, run_key = jax.random.split(jax.random.key(seed))
  sample_x = jnp.asarray(data.train.x[0, :1])
  initial = algorithm.init(init_key, workload.model.init(init_key, sample_x))

  # Each way carries its own state across rounds and keeps round 0's params.
  compiled = {"state": initial, "first_params": None}
  loop = {"params": initial.params, "opt_state": initial.opt_state}
  step_loop = {"params": initial.params, "opt_state": initial.opt_state}

  def run_compiled(r):
    state, _ = compiled_round(
      compiled["state"], data, jax.random.fold_in(run_key, r)
    )
    compiled["state"] = state
    if r == 0:
      compiled["first_params"] = state.params
    return state.params

  def run_loop(r):
    params, opt_state = loop_round(
      loop["params"],
      loop["opt_state"],
      data.train,
      jax.random.fold_in(run_key, r),
    )
    loop.update(params=params, opt_state=opt_state)
    if r == 0:
      loop["first_params"] = params
    return params

  def run_step_loop(r):
    params, opt_state = step_loop_round(
      step_loop["params"],
      step_loop["opt_state"],
      data.train,
      jax.random.fold_in(run_key, r),
    )
    step_loop.update(params=params, opt_state=opt_state)
    if r == 0:
      step_loop["first_params"] = params
    return params

  times = time_alternating(
    {
      "compiled": run_compiled,
      "loop": run_loop,
      "fedjax_loop": run_step_loop,
    },
    option("rounds"),
  )
  # Round 0 of every way started from `initial` with the same key.
  max_abs_diff, passed = max_abs_diff_and_close(
    compiled["first_params"], loop["first_params"]
  )
  step_diff, step_passed = max_abs_diff_and_close(
    compiled["first_params"], step_loop["first_params"]
  )
  max_abs_diff = max(max_abs_diff, step_diff)
  passed = passed and step_passed
  compiled_times, loop_times = times["compiled"], times["loop"]
  step_times = times["fedjax_loop"]

  return {
    **workload.description,
    "clients_per_round": workload.clients_per_round,
    "compiled": compiled_times,
    "loop": loop_times,
    "fedjax_loop": step_times,
    "ratio": loop_times["median_seconds"] / compiled_times["median_seconds"],
    "fedjax_ratio": (
      step_times["median_seconds"] / compiled_times["median_seconds"]
    ),
    "equivalence": {
      "max_abs_diff": max_abs_diff,
      "rtol": _RTOL.value,
      "atol": _ATOL.value,
      "passed": passed,
    },
  }


def collect_metadata(
  command: str, load_average_start: tuple[float, float, float]
) -> dict:
  """Returns the command, library versions and machine of this run.

  The load averages (1, 5 and 15 minutes, from `os.getloadavg`) at the start
  and end show whether other processes competed for the CPU.
  """
  metadata = run_metadata.collect_metadata(command)
  metadata["load_average_start"] = list(load_average_start)
  metadata["load_average_end"] = list(os.getloadavg())
  return metadata


def check_targets(results: dict[str, dict]) -> dict[str, dict]:
  """Compares each targeted workload's loop / compiled ratio to its target."""
  checks = {}
  for name, minimum in TARGETS.items():
    ratio = results[name]["fedjax_ratio"] if name in results else None
    checks[name] = {
      "min_ratio": minimum,
      "ratio": ratio,
      "met": None if ratio is None else bool(ratio >= minimum),
    }
  return checks


def format_table(results: dict[str, dict]) -> str:
  """Formats seconds per round of both ways as a markdown table."""
  lines = [
    "| workload | clients/round | compiled s/round | FedJAX-style loop "
    "s/round | FedJAX-style / compiled | per-client-jit loop s/round | "
    "per-client-jit / compiled | compiled 1st round s | "
    "same params (max abs diff) |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---|",
  ]
  for name, result in results.items():
    compiled, loop = result["compiled"], result["loop"]
    equivalence = result["equivalence"]
    same = "yes" if equivalence["passed"] else "NO"
    lines.append(
      f"| {name} | {result['clients_per_round']} "
      f"| {compiled['median_seconds']:.4f} "
      f"| {result['fedjax_loop']['median_seconds']:.4f} "
      f"| {result['fedjax_ratio']:.1f}x | {loop['median_seconds']:.4f} "
      f"| {result['ratio']:.1f}x | {compiled['first_round_seconds']:.2f} "
      f"| {same} ({equivalence['max_abs_diff']:.1e}) |"
    )
  return "\n".join(lines)


def format_targets(checks: dict[str, dict]) -> str:
  lines = []
  for name, check in checks.items():
    if check["ratio"] is None:
      verdict = "not run"
    else:
      status = "met" if check["met"] else "NOT met"
      verdict = f"{check['ratio']:.1f}x ({status})"
    lines.append(
      f"- {name}: FedJAX-style loop / compiled >= {check['min_ratio']:g}x: "
      f"{verdict}"
    )
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for name in _WORKLOADS.value:
    if name not in WORKLOADS:
      raise app.UsageError(
        f"--workloads contains {name!r}, which is unknown; use any of "
        f"{','.join(WORKLOADS)}."
      )
  for name in ("rounds", "num_local_steps", "batch_size"):
    if option(name) < 1:
      raise app.UsageError(f"--{name}={option(name)} must be at least 1.")
  logging.set_verbosity(logging.WARNING)  # The partitioners log at INFO.
  command = "python " + shlex.join(sys.argv)
  load_average_start = os.getloadavg()

  client = ClientConfig(
    learning_rate=_LEARNING_RATE.value,
    num_local_steps=option("num_local_steps"),
    batch_size=option("batch_size"),
    optimizer="sgd",
  )
  results = {}
  for name in _WORKLOADS.value:
    workload = build_workload(name, _SEED.value)
    results[name] = run_workload(workload, client, _SEED.value)
    print(f"{name}: done", flush=True)

  table = format_table(results)
  checks = check_targets(results)
  payload = {
    "metadata": collect_metadata(command, load_average_start),
    "settings": {
      "quick": _QUICK.value,
      "workloads": list(results),
      "rounds": option("rounds"),
      "num_local_steps": client.num_local_steps,
      "batch_size": client.batch_size,
      "learning_rate": client.learning_rate,
      "clients_per_chunk": option("clients_per_chunk"),
      "seed": _SEED.value,
    },
    "workloads": results,
    "table": table,
    "targets": checks,
  }
  output = os.path.abspath(_OUTPUT.value)
  os.makedirs(os.path.dirname(output), exist_ok=True)
  write_json(output, payload)

  metadata = payload["metadata"]
  machine = metadata["machine"]
  print()
  print(
    f"Median seconds per FedAvg round over {option('rounds')} rounds, "
    f"{client.num_local_steps} local steps of batch {client.batch_size}, on "
    f"{machine['jax_backend']} ({machine['cpu_affinity_count']} usable CPU "
    f"cores, {machine['cpu_model']}). Load average (1 min) "
    f"{metadata['load_average_start'][0]:.2f} at the start, "
    f"{metadata['load_average_end'][0]:.2f} at the end."
  )
  print()
  print(table)
  print()
  print("Targets (stated for a 2-core CPU):")
  print(format_targets(checks))
  print()
  print(f"Command: {command}")
  print(f"Results: {output}")


if __name__ == "__main__":
  app.run(main)
