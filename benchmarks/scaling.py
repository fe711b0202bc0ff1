r"""Scaling of the compiled FedAvg round with the cohort size.

The script measures, in one run:

  seconds per round  the compiled round (`jax.jit(fedavg(...).run_round)`,
                     `--clients_per_chunk` clients vmapped together) for
                     `--mlp_cohorts` and `--cnn_cohorts` clients per round,
                     on one device and sharded over `--num_devices` (by
                     default one CPU device per usable core, see
                     `fedjax_med.core.sharding.request_cpu_devices`), and
                     the two per-client loops of
                     `benchmarks/client_loops.py` on the same workload at
                     `--loop_cohorts`: "loop" (one jit-compiled
                     `local_train` call per client) and "fedjax_loop" (the
                     design of FedJAX's default engine, one jit-compiled call
                     per local step), which run on one device. At every loop
                     cohort the first round of every way is checked to give
                     the same parameters.
  memory             XLA's compiled memory of the MLP round
                     (`Compiled.memory_analysis()`, per device) at
                     `--memory_cohorts`, with the chunk size picked from
                     `--memory_budget_mb` (`fedjax_med.core.memory`), next to
                     the unchunked round's. The budget bounds the peak:
                     the arguments (the population's data and the state),
                     the outputs and the temporaries.
  FLOP/s             the CNN round's floating-point operations over its
                     median seconds, against the best of `--matmul_repeats`
                     float32 matmuls of `--matmul_size`. XLA's
                     `cost_analysis` counts a loop body once, whatever its
                     trip count. So the round's count is that of one local
                     step of one client (a program without loops), times
                     the local steps and the clients per round. The server
                     step is left out.

Workloads: the zoo MLP (one hidden layer of 64) on the 64 digits features,
and the zoo CNN (convolution as image patches times a matrix) on 8x8x1
digits images. Each of the `--num_clients` clients has `--client_rows`
rows drawn with replacement from the 1797 digits, so that 10 000 clients
have data; the population is the same at every cohort size. Every client
runs `--num_local_steps` SGD steps of `--batch_size`.

`--device=gpu` runs the same measurements on the first GPU (the sharded
round on `--num_devices` GPUs, all by default), records `jax.devices()` and
fails with a message when JAX finds no GPU.

Run from the repository root:
  python benchmarks/scaling.py
  python benchmarks/scaling.py --device=gpu
  python benchmarks/scaling.py --quick --output=/tmp/scaling.json
"""

from __future__ import annotations

import os
import pathlib
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging

# A sibling file: running this script puts its directory on sys.path.
from client_loops import make_loop_round, make_step_loop_round

from fedjax_med.algorithms.fedavg import ClientConfig, CohortConfig, fedavg
from fedjax_med.core import memory, sharding
from fedjax_med.data.federated_data import ClientArrays, FederatedData
from fedjax_med.data.sklearn_sources import load_digits_arrays
from fedjax_med.models.base import Model
from fedjax_med.models.registry import get_model
from fedjax_med.training import run_metadata
from fedjax_med.training.experiment import write_json

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEVICES = ("cpu", "gpu")
MIB = memory.MIB
# The compiled round must beat the FedJAX-style loop by this factor at this
# cohort size, on the MLP.
TARGET_RATIO = 10.0
TARGET_COHORT = 1000
# The compiled round against Flower's simulation engine on a small model.
FLOWER_TARGET_RATIO = 100.0
FLOWER_OVERRIDES = "client.num_local_steps=1"

# Sizes that --quick sets unless the flag is passed explicitly.
QUICK_VALUES = {
  "rounds": 1,
  "num_clients": 64,
  "mlp_cohorts": ["4"],
  "cnn_cohorts": ["4"],
  "loop_cohorts": ["4"],
  "memory_cohorts": ["16", "64"],
  "memory_budget_mb": 1.0,
  "matmul_size": 256,
  "matmul_repeats": 2,
  "num_local_steps": 2,
  "batch_size": 4,
  "client_rows": 8,
  "clients_per_chunk": 4,
  "num_devices": 2,
}

_FLOWER_SIMULATION = flags.DEFINE_bool(
  "flower_simulation",
  True,
  "Also time configs/breast_cancer_fedavg.py (logistic regression, 10 "
  "clients per round, 1 local step) under Flower's simulation engine and "
  "as the compiled round; needs the flower extra and unshare. --quick "
  "turns it off unless passed.",
)
_DEVICE = flags.DEFINE_enum(
  "device", "cpu", DEVICES, "Platform to run on; gpu fails without a GPU."
)
_OUTPUT = flags.DEFINE_string(
  "output",
  None,
  "Path of the JSON results; default benchmarks/results/scaling.json, or "
  "scaling_gpu.json with --device=gpu.",
)
_QUICK = flags.DEFINE_bool(
  "quick", False, "Smoke run with tiny sizes; explicit flags still apply."
)
flags.DEFINE_integer("rounds", 3, "Timed rounds per way after the first.")
flags.DEFINE_integer("num_clients", 10_000, "Clients in the population.")
flags.DEFINE_integer("client_rows", 16, "Rows each client holds.")
flags.DEFINE_list(
  "mlp_cohorts", ["10", "100", "1000", "10000"], "MLP clients per round."
)
# On 2 idle CPU cores the CNN round took about 2 ms per client on one
# device, so its 10 000-client rounds take about 2.5 minutes of the run.
flags.DEFINE_list(
  "cnn_cohorts", ["10", "100", "1000", "10000"], "CNN clients per round."
)
flags.DEFINE_list(
  "loop_cohorts",
  ["10", "100", "1000"],
  "Clients per round of the per-client loops (both workloads).",
)
flags.DEFINE_list(
  "memory_cohorts", ["100", "1000", "10000"], "MLP cohorts of the memory run."
)
# The 10 000 clients' data take 40 MB, so 64 MB leaves 24 MB for chunks.
flags.DEFINE_float(
  "memory_budget_mb",
  64.0,
  "Peak memory per device allowed in the memory run, in MB.",
)
flags.DEFINE_integer(
  "clients_per_chunk", 50, "Clients vmapped together in the timed rounds."
)
flags.DEFINE_integer(
  "num_devices",
  0,
  "Devices the sharded compiled round splits its cohort over; 0 means one "
  "CPU device per usable core (or every GPU with --device=gpu), 1 skips "
  "the sharded round.",
)
flags.DEFINE_integer("num_local_steps", 4, "Local SGD steps per round.")
flags.DEFINE_integer("batch_size", 16, "Examples per local step.")
_LEARNING_RATE = flags.DEFINE_float(
  "learning_rate", 0.1, "Client SGD learning rate."
)
flags.DEFINE_integer("matmul_size", 2048, "n of the n x n float32 matmul.")
flags.DEFINE_integer("matmul_repeats", 5, "Timed matmuls; the best counts.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the data, init and rounds.")


def option(name: str) -> Any:
  """Returns flag `name`, replaced by its --quick size unless passed."""
  value = flags.FLAGS[name].value
  if _QUICK.value and name in QUICK_VALUES and not flags.FLAGS[name].present:
    value = QUICK_VALUES[name]
  return value


def int_list(name: str) -> list[int]:
  try:
    return [int(v) for v in option(name)]
  except ValueError as error:
    raise app.UsageError(
      f"--{name}={','.join(option(name))} is invalid; pass integers, e.g. "
      f"--{name}=10,100."
    ) from error


def select_device(device: str) -> tuple[list[str], int]:
  """Pins JAX to `device`.

  Returns:
    `jax.devices()` as strings, and the devices of the sharded round.

  Raises:
    app.UsageError: If there is no GPU for `device="gpu"`, or fewer
      devices than `--num_devices`.
  """
  requested = option("num_devices")
  if requested < 0:
    raise app.UsageError(
      f"--num_devices={requested} must not be negative; pass 0 for one per "
      "core (CPU) or every GPU."
    )
  if device == "cpu":
    jax.config.update("jax_platforms", "cpu")
    cores = sharding.usable_cores()
    sharding.request_cpu_devices(requested or cores)
    return [str(d) for d in jax.devices()], requested or cores
  try:
    gpus = jax.devices("gpu")
  except RuntimeError as error:
    raise app.UsageError(
      f"--device=gpu but JAX found no GPU ({error}); run on a machine with "
      "an NVIDIA GPU and a CUDA build of jax (pip install 'jax[cuda12]'), "
      "or pass --device=cpu."
    ) from error
  if jax.default_backend() != "gpu":
    raise app.UsageError(
      f"--device=gpu found {gpus}, but JAX's default backend is "
      f"{jax.default_backend()!r}; unset JAX_PLATFORMS or set it to 'cuda'."
    )
  return [str(d) for d in jax.devices()], requested or len(gpus)


def resampled_digits(as_images: bool, num_clients: int, rows: int, seed: int):
  """Gives each client `rows` digits drawn with replacement."""
  source = load_digits_arrays(as_images=as_images)
  rng = np.random.default_rng(seed)
  index = rng.integers(0, len(source.y), size=(num_clients, rows))
  arrays = ClientArrays(
    x=np.asarray(source.x[index], np.float32),
    y=np.asarray(source.y[index], np.int32),
    mask=np.ones((num_clients, rows), bool),
    num_examples=np.full((num_clients,), rows, np.int32),
  )
  return FederatedData(
    train=arrays,
    test=arrays,
    client_names=tuple(f"client_{k}" for k in range(num_clients)),
    num_classes=source.num_classes,
    name="digits_resampled",
  )


def build_model(name: str, data: FederatedData) -> Model:
  if name == "mlp":
    return get_model(
      "mlp",
      num_classes=data.num_classes,
      feature_shape=data.feature_shape,
      hidden_sizes=(64,),
    )
  return get_model(
    "cnn",
    num_classes=data.num_classes,
    feature_shape=data.feature_shape,
    channels=(16, 32),
    conv_impl="patches",
  )


def time_alternating(
  runs: dict[str, Callable[[int], Any]], rounds: int
) -> dict[str, dict]:
  """Times round 0 of every way (with compilation), then `rounds` more.

  The ways take turns within each round, so a change in background load
  affects all of them alike.

  Returns:
    Per way: the median, the minimum and every timed round's seconds,
    round 0's, and the median CPU seconds of this process per timed round
    (over the wall seconds, the cores it kept busy). On a shared machine
    the minimum is the least disturbed by other processes.
  """

  def seconds(run, r):
    start, cpu_start = time.perf_counter(), time.process_time()
    jax.block_until_ready(run(r))
    return time.perf_counter() - start, time.process_time() - cpu_start

  first = {way: seconds(run, 0)[0] for way, run in runs.items()}
  timed = {way: [] for way in runs}
  cpu = {way: [] for way in runs}
  for r in range(1, rounds + 1):
    for way, run in runs.items():
      wall, busy = seconds(run, r)
      timed[way].append(wall)
      cpu[way].append(busy)
  return {
    way: {
      "median_seconds": statistics.median(timed[way]),
      "min_seconds": min(timed[way]),
      "round_seconds": timed[way],
      "first_round_seconds": first[way],
      "median_cpu_seconds": statistics.median(cpu[way]),
    }
    for way in runs
  }


def max_abs_diff(a: Any, b: Any) -> float:
  return max(
    float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


class Workload:
  """One model on the resampled digits, with the three ways to run it."""

  def __init__(self, name: str, client: ClientConfig, seed: int):
    self.name = name
    self.client = client
    self.data = resampled_digits(
      name == "cnn", option("num_clients"), option("client_rows"), seed
    )
    self.model = build_model(name, self.data)
    self.device_data = jax.device_put(self.data)
    init_key, self.run_key = jax.random.split(jax.random.key(seed))
    sample_x = jnp.asarray(self.data.train.x[0, :1])
    self.variables = self.model.init(init_key, sample_x)
    self.init_key = init_key
    self._replicated = None

  def algorithm(
    self,
    clients_per_round: int,
    clients_per_chunk: int | None,
    mesh: jax.sharding.Mesh | None = None,
  ):
    cohort = CohortConfig(
      clients_per_round, clients_per_chunk=clients_per_chunk, mesh=mesh
    )
    return fedavg(
      self.model, self.data.num_clients, client=self.client, cohort=cohort
    )

  def compiled_run(
    self, clients_per_round: int, mesh: jax.sharding.Mesh | None = None
  ):
    """Builds the compiled round, on one device or sharded over `mesh`."""
    algorithm = self.algorithm(
      clients_per_round, option("clients_per_chunk"), mesh
    )
    run_round = sharding.jit_round(algorithm.run_round, mesh)
    data = self.device_data if mesh is None else self.replicated_data(mesh)
    carry = {
      "state": sharding.replicate(
        algorithm.init(self.init_key, self.variables), mesh
      )
    }

    def run(r):
      state, _ = run_round(
        carry["state"], data, jax.random.fold_in(self.run_key, r)
      )
      carry["state"] = state
      carry.setdefault("first_params", state.params)
      return state.params

    return run, carry

  def replicated_data(self, mesh: jax.sharding.Mesh) -> FederatedData:
    if self._replicated is None:
      self._replicated = sharding.replicate(self.data, mesh)
    return self._replicated

  def loop_run(self, make_round, clients_per_round: int):
    run_round = make_round(
      self.model,
      self.data.num_clients,
      self.client,
      clients_per_round,
      optax.sgd(1.0),  # fedavg's default server_learning_rate.
    )
    initial = self.algorithm(clients_per_round, None).init(
      self.init_key, self.variables
    )
    carry = {"params": initial.params, "opt_state": initial.opt_state}

    def run(r):
      params, opt_state = run_round(
        carry["params"],
        carry["opt_state"],
        self.device_data.train,
        jax.random.fold_in(self.run_key, r),
      )
      carry.update(params=params, opt_state=opt_state)
      carry.setdefault("first_params", params)
      return params

    return run, carry


def time_workload(
  workload: Workload, cohorts: list[int], mesh: jax.sharding.Mesh | None
) -> list[dict]:
  """Seconds per round of the compiled rounds and the loops, per cohort.

  Each `*_ratio` is a loop's seconds over the one-device compiled round's,
  and each `*_sharded_ratio` over the round sharded over `mesh`.
  """
  rows = []
  loop_cohorts = set(int_list("loop_cohorts"))
  for clients_per_round in cohorts:
    row = {"clients_per_round": clients_per_round}
    run, compiled_carry = workload.compiled_run(clients_per_round)
    runs, carries = {"compiled": run}, {}
    if mesh is not None:
      runs["compiled_sharded"], carries["compiled_sharded"] = (
        workload.compiled_run(clients_per_round, mesh)
      )
    if clients_per_round in loop_cohorts:
      for way, make_round in (
        ("loop", make_loop_round),
        ("fedjax_loop", make_step_loop_round),
      ):
        runs[way], carries[way] = workload.loop_run(
          make_round, clients_per_round
        )
    row.update(time_alternating(runs, option("rounds")))
    for way, carry in carries.items():
      # Round 0 of every way started from the same state and key.
      row[f"{way}_max_abs_diff"] = max_abs_diff(
        compiled_carry["first_params"], carry["first_params"]
      )
      if way == "compiled_sharded":
        row["num_devices"] = mesh.devices.size
        continue
      for engine, suffix in (
        ("compiled", ""),
        ("compiled_sharded", "_sharded"),
      ):
        if engine in row:
          row[f"{way}{suffix}_ratio"] = (
            row[way]["median_seconds"] / row[engine]["median_seconds"]
          )
          row[f"{way}{suffix}_min_ratio"] = (
            row[way]["min_seconds"] / row[engine]["min_seconds"]
          )
    rows.append(row)
    print(f"{workload.name} at {clients_per_round} clients: done", flush=True)
  return rows


def memory_rows(workload: Workload, budget_mb: float) -> list[dict]:
  """Compiled memory of the MLP round, chunked by the budget and unchunked."""
  rows = []
  budget_bytes = int(budget_mb * MIB)
  for clients_per_round in int_list("memory_cohorts"):
    analyses = {}

    def analyze(chunk, clients_per_round=clients_per_round, analyses=analyses):
      if chunk not in analyses:
        analyses[chunk] = memory.compile_round(
          workload.algorithm(clients_per_round, chunk),
          workload.variables,
          workload.device_data,
        ).memory_analysis()
      return analyses[chunk]

    chunk = memory.chunk_for_budget(
      lambda chunk, analyze=analyze: memory.peak_bytes(analyze(chunk)),
      clients_per_round,
      budget_bytes,
    )
    row = {"clients_per_round": clients_per_round, "clients_per_chunk": chunk}
    for label, chunk_size in (("chunked", chunk), ("unchunked", None)):
      analysis = analyze(chunk_size)
      row[label] = {
        "temp_bytes": int(analysis.temp_size_in_bytes),
        "argument_bytes": int(analysis.argument_size_in_bytes),
        "output_bytes": int(analysis.output_size_in_bytes),
        "alias_bytes": int(analysis.alias_size_in_bytes),
        "peak_bytes": memory.peak_bytes(analysis),
      }
    row["within_budget"] = row["chunked"]["peak_bytes"] <= budget_bytes
    rows.append(row)
    print(f"memory at {clients_per_round} clients: done", flush=True)
  return rows


def matmul_peak_flops(size: int, repeats: int) -> dict:
  """Best float32 FLOP/s of an `size x size` matmul on the default device."""
  keys = jax.random.split(jax.random.key(0))
  a = jax.random.normal(keys[0], (size, size), jnp.float32)
  b = jax.random.normal(keys[1], (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, b))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    best = min(best, time.perf_counter() - start)
  return {
    "size": size,
    "best_seconds": best,
    "flops_per_second": 2.0 * size**3 / best,
  }


def local_step_flops(workload: Workload) -> float:
  """XLA's FLOP count of one client's local SGD step, a loop-free program."""
  batch = min(workload.client.batch_size, option("client_rows"))
  x = jnp.asarray(workload.data.train.x[0, :batch])
  y = jnp.asarray(workload.data.train.y[0, :batch])
  model, loss_fn = workload.model, workload.client.loss_fn
  rate = _LEARNING_RATE.value

  def step(params, x, y):
    def objective(params):
      logits, _ = model.apply({"params": params}, x, train=False)
      return jnp.mean(loss_fn(logits, y))

    grads = jax.grad(objective)(params)
    return jax.tree.map(lambda p, g: p - rate * g, params, grads)

  compiled = jax.jit(step).lower(workload.variables["params"], x, y).compile()
  return float(compiled.cost_analysis()["flops"])


def flops_rows(workload: Workload, timing: list[dict], peak: dict) -> dict:
  step = local_step_flops(workload)
  rows = []
  for row in timing:
    flops = step * workload.client.num_local_steps * row["clients_per_round"]
    achieved = flops / row["compiled"]["median_seconds"]
    entry = {
      "clients_per_round": row["clients_per_round"],
      "round_flops": flops,
      "flops_per_second": achieved,
      "fraction_of_matmul_peak": achieved / peak["flops_per_second"],
    }
    if "compiled_sharded" in row:
      sharded = flops / row["compiled_sharded"]["median_seconds"]
      entry["sharded_flops_per_second"] = sharded
      entry["sharded_fraction_of_matmul_peak"] = (
        sharded / peak["flops_per_second"]
      )
    rows.append(entry)
  return {"local_step_flops": step, "rows": rows}


def flower_simulation_row(enabled: bool, rounds: int) -> dict:
  """Times one workload under Flower's simulation engine and compiled.

  Both run `FLOWER_OVERRIDES` of configs/breast_cancer_fedavg.py in this
  run: Flower's ServerApp and ClientApps under `run_simulation` (see
  `fedjax_med.distributed.flower.simulation`), and the compiled
  `run_round` of the same config, timed round by round after a first
  round that compiles.
  """
  if not enabled:
    return {"status": "not measured", "seconds_per_round": None}
  from fedjax_med.distributed.flower import federation as federation_lib
  from fedjax_med.distributed.flower import simulation as flower_simulation
  from fedjax_med.training import experiment

  flower = flower_simulation.flower_seconds_per_round(
    flower_simulation.DEFAULT_CONFIG,
    FLOWER_OVERRIDES,
    num_rounds=max(rounds, 2) + 2,
  )
  config = federation_lib.load_config(
    str(flower_simulation.DEFAULT_CONFIG), FLOWER_OVERRIDES
  )
  data = experiment.load_data(config)
  model = experiment.build_model(config, data)
  algorithm = experiment.build_algorithm(config, model, data)
  init_key, run_key = jax.random.split(jax.random.PRNGKey(config.seed))
  state = algorithm.init(
    init_key, model.init(init_key, jnp.asarray(data.train.x[0, :1]))
  )
  run_round = jax.jit(algorithm.run_round)
  device_data = jax.device_put(data)
  states = [state]

  def compiled(r):
    states[0], metrics = run_round(
      states[0], device_data, jax.random.fold_in(run_key, r)
    )
    return metrics

  timing = time_alternating({"compiled": compiled}, max(rounds, 10))
  compiled_seconds = timing["compiled"]["median_seconds"]
  ratio = flower["seconds_per_round"] / compiled_seconds
  return {
    "status": "measured",
    "config": str(flower_simulation.DEFAULT_CONFIG.relative_to(ROOT)),
    "overrides": FLOWER_OVERRIDES,
    "clients_per_round": flower["clients_per_round"],
    "seconds_per_round": flower["seconds_per_round"],
    "flower_round_seconds": flower["round_seconds"],
    "compiled": timing["compiled"],
    "ratio": ratio,
    "min_ratio": FLOWER_TARGET_RATIO,
    "met": ratio >= FLOWER_TARGET_RATIO,
  }


def check_target(mlp_rows: list[dict]) -> dict:
  """Compares the FedJAX-style loop with the compiled round at 1000 clients.

  The top-level figures are for the one-device round, `sharded` for the
  round sharded over the run's devices (None without one). `met` uses the
  median rounds; `met_on_min` the fastest rounds.
  """

  def verdict(ratio, min_ratio):
    return {
      "ratio": ratio,
      "met": ratio >= TARGET_RATIO,
      "ratio_on_min": min_ratio,
      "met_on_min": min_ratio >= TARGET_RATIO,
    }

  for row in mlp_rows:
    if row["clients_per_round"] == TARGET_COHORT and "fedjax_loop" in row:
      target = {
        "min_ratio": TARGET_RATIO,
        **verdict(row["fedjax_loop_ratio"], row["fedjax_loop_min_ratio"]),
        "sharded": None,
      }
      if "fedjax_loop_sharded_ratio" in row:
        target["sharded"] = {
          "num_devices": row["num_devices"],
          **verdict(
            row["fedjax_loop_sharded_ratio"],
            row["fedjax_loop_sharded_min_ratio"],
          ),
        }
      return target
  return {"min_ratio": TARGET_RATIO, "ratio": None, "met": None}


def format_timing(name: str, rows: list[dict]) -> list[str]:
  lines = []
  for row in rows:
    cells = [name, str(row["clients_per_round"])]
    for way in ("compiled", "compiled_sharded"):
      if way in row:
        cells.append(
          f"{row[way]['median_seconds']:.4f} / {row[way]['min_seconds']:.4f}"
        )
      else:
        cells.append("-")
    for way in ("loop", "fedjax_loop"):
      if way in row:
        ratios = f"{row[f'{way}_ratio']:.1f}x"
        if f"{way}_sharded_ratio" in row:
          ratios += f" / {row[f'{way}_sharded_ratio']:.1f}x"
        cells.append(f"{row[way]['median_seconds']:.4f} ({ratios})")
      else:
        cells.append("-")
    diffs = [v for k, v in row.items() if k.endswith("_max_abs_diff")]
    cells.append(f"{max(diffs):.1e}" if diffs else "-")
    cells.append(f"{row['compiled']['first_round_seconds']:.2f}")
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def format_tables(results: dict, num_devices: int) -> dict[str, str]:
  timing = [
    "| model | clients/round | compiled, 1 device, s/round (median / min) "
    f"| compiled, {num_devices} devices, s/round (median / min) | "
    "per-client-jit loop s/round (median; loop/compiled on 1 / "
    f"{num_devices} devices) | FedJAX-style loop s/round (median; "
    f"loop/compiled on 1 / {num_devices} devices) | max abs diff, round 1 "
    "| compiled 1st round s (with compile) |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for name in ("mlp", "cnn"):
    timing += format_timing(name, results["seconds_per_round"][name])
  ways = ("compiled", "compiled_sharded", "loop", "fedjax_loop")
  busy = [
    "| model | clients/round | compiled, 1 device | compiled, "
    f"{num_devices} devices | per-client-jit loop | FedJAX-style loop |",
    "|---|---:|---:|---:|---:|---:|",
  ]
  for name in ("mlp", "cnn"):
    for row in results["seconds_per_round"][name]:
      cells = [
        f"{row[w]['median_cpu_seconds'] / row[w]['median_seconds']:.2f}"
        if w in row
        else "-"
        for w in ways
      ]
      busy.append(
        f"| {name} | {row['clients_per_round']} | " + " | ".join(cells) + " |"
      )
  budget = results["memory"]["budget_mb"]
  mem = [
    f"| clients/round | clients/chunk (budget {budget:g} MB) | temp MB "
    "chunked | temp MB unchunked | peak MB chunked | peak MB unchunked | "
    "arguments MB | within budget |",
    "|---:|---:|---:|---:|---:|---:|---:|---|",
  ]
  for row in results["memory"]["rows"]:
    mem.append(
      f"| {row['clients_per_round']} | {row['clients_per_chunk']} "
      f"| {row['chunked']['temp_bytes'] / MIB:.2f} "
      f"| {row['unchunked']['temp_bytes'] / MIB:.2f} "
      f"| {row['chunked']['peak_bytes'] / MIB:.2f} "
      f"| {row['unchunked']['peak_bytes'] / MIB:.2f} "
      f"| {row['chunked']['argument_bytes'] / MIB:.2f} "
      f"| {'yes' if row['within_budget'] else 'NO'} |"
    )
  peak = results["flops"]["matmul_peak"]
  flop = [
    f"| clients/round | CNN round GFLOP | achieved GFLOP/s, 1 device | "
    f"fraction of matmul peak ({peak['flops_per_second'] / 1e9:.1f} "
    f"GFLOP/s) | achieved GFLOP/s, {num_devices} devices | fraction of "
    "matmul peak |",
    "|---:|---:|---:|---:|---:|---:|",
  ]
  for row in results["flops"]["cnn"]["rows"]:
    sharded = "- | -"
    if "sharded_flops_per_second" in row:
      sharded = (
        f"{row['sharded_flops_per_second'] / 1e9:.2f} "
        f"| {row['sharded_fraction_of_matmul_peak']:.3f}"
      )
    flop.append(
      f"| {row['clients_per_round']} | {row['round_flops'] / 1e9:.2f} "
      f"| {row['flops_per_second'] / 1e9:.2f} "
      f"| {row['fraction_of_matmul_peak']:.3f} | {sharded} |"
    )
  return {
    "seconds_per_round": "\n".join(timing),
    "cores_busy": "\n".join(busy),
    "memory": "\n".join(mem),
    "flops": "\n".join(flop),
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for name in ("rounds", "num_local_steps", "batch_size", "client_rows"):
    if option(name) < 1:
      raise app.UsageError(f"--{name}={option(name)} must be at least 1.")
  largest = max(
    int_list("mlp_cohorts")
    + int_list("cnn_cohorts")
    + int_list("loop_cohorts")
    + int_list("memory_cohorts")
  )
  if largest > option("num_clients"):
    raise app.UsageError(
      f"a cohort of {largest} clients exceeds --num_clients="
      f"{option('num_clients')}; raise --num_clients or lower the cohorts."
    )
  devices, num_devices = select_device(_DEVICE.value)
  if num_devices > len(devices):
    raise app.UsageError(
      f"--num_devices={num_devices} exceeds the {len(devices)} devices "
      f"present ({devices}); lower it. On a CPU, JAX started before the "
      "script could add devices, or XLA_FLAGS sets fewer."
    )
  mesh = sharding.client_mesh(num_devices)
  logging.set_verbosity(logging.WARNING)
  command = "python " + shlex.join(sys.argv)
  start = time.perf_counter()
  load_average_start = os.getloadavg()

  client = ClientConfig(
    learning_rate=_LEARNING_RATE.value,
    num_local_steps=option("num_local_steps"),
    batch_size=option("batch_size"),
  )
  mlp = Workload("mlp", client, _SEED.value)
  cnn = Workload("cnn", client, _SEED.value)
  timing = {
    "mlp": time_workload(mlp, int_list("mlp_cohorts"), mesh),
    "cnn": time_workload(cnn, int_list("cnn_cohorts"), mesh),
  }
  budget_mb = option("memory_budget_mb")
  memory_results = {"budget_mb": budget_mb, "rows": memory_rows(mlp, budget_mb)}
  peak = matmul_peak_flops(option("matmul_size"), option("matmul_repeats"))
  flops = {"matmul_peak": peak, "cnn": flops_rows(cnn, timing["cnn"], peak)}

  results = {
    "seconds_per_round": timing,
    "memory": memory_results,
    "flops": flops,
    "target": check_target(timing["mlp"]),
    "flower_simulation": flower_simulation_row(
      _FLOWER_SIMULATION.value
      and (not _QUICK.value or flags.FLAGS["flower_simulation"].present),
      option("rounds"),
    ),
  }
  tables = format_tables(results, num_devices)
  metadata = run_metadata.collect_metadata(command)
  metadata["device"] = _DEVICE.value
  metadata["devices"] = devices
  # Load averages (1, 5, 15 min) show how much other processes competed.
  metadata["load_average_start"] = list(load_average_start)
  metadata["load_average_end"] = list(os.getloadavg())
  payload = {
    "metadata": metadata,
    "settings": {
      name: option(name)
      for name in [
        "quick",
        "rounds",
        "num_clients",
        "client_rows",
        "mlp_cohorts",
        "cnn_cohorts",
        "loop_cohorts",
        "memory_cohorts",
        "memory_budget_mb",
        "clients_per_chunk",
        "num_devices",
        "num_local_steps",
        "batch_size",
        "matmul_size",
        "matmul_repeats",
        "seed",
      ]
    },
    **results,
    "tables": tables,
    "total_seconds": time.perf_counter() - start,
  }
  # The devices the sharded round used; 1 when it did not run.
  payload["settings"]["num_devices"] = 1 if mesh is None else num_devices
  output = _OUTPUT.value or (
    "benchmarks/results/scaling.json"
    if _DEVICE.value == "cpu"
    else "benchmarks/results/scaling_gpu.json"
  )
  output = os.path.abspath(output)
  os.makedirs(os.path.dirname(output), exist_ok=True)
  write_json(output, payload)

  machine = metadata["machine"]
  print()
  print(
    f"FedAvg rounds of {client.num_local_steps} local steps of batch "
    f"{client.batch_size} on {devices[0]} ({machine['cpu_affinity_count']} "
    f"usable CPU cores, {machine['cpu_model']}); jax "
    f"{metadata['versions'].get('jax')}; {payload['total_seconds']:.0f} s "
    "in all. Load average (1 min) "
    f"{metadata['load_average_start'][0]:.1f} at the start, "
    f"{metadata['load_average_end'][0]:.1f} at the end."
  )
  print()
  print(tables["seconds_per_round"])
  print()
  print("Cores kept busy (CPU seconds over wall seconds, medians):")
  print(tables["cores_busy"])
  print()
  print(tables["memory"])
  print()
  print(tables["flops"])
  target = results["target"]
  print()
  if target["ratio"] is None:
    print(f"Target: no loop run at {TARGET_COHORT} MLP clients per round.")
  else:
    print(
      f"Target: compiled >= {TARGET_RATIO:g}x faster than the FedJAX-style "
      f"loop at {TARGET_COHORT} MLP clients per round: "
      f"{target['ratio']:.1f}x on medians "
      f"({'met' if target['met'] else 'NOT met'}), "
      f"{target['ratio_on_min']:.1f}x on the fastest rounds "
      f"({'met' if target['met_on_min'] else 'NOT met'}) on one device."
    )
    sharded = target["sharded"]
    if sharded is not None:
      print(
        f"  Sharded over {sharded['num_devices']} devices: "
        f"{sharded['ratio']:.1f}x on medians "
        f"({'met' if sharded['met'] else 'NOT met'}), "
        f"{sharded['ratio_on_min']:.1f}x on the fastest rounds "
        f"({'met' if sharded['met_on_min'] else 'NOT met'})."
      )
  flower = results["flower_simulation"]
  if flower["status"] == "measured":
    print(
      f"Flower simulation engine: {flower['seconds_per_round']:.3f} s per "
      f"round against {flower['compiled']['median_seconds'] * 1e3:.2f} ms "
      f"compiled on {flower['config']} ({flower['overrides']}, "
      f"{flower['clients_per_round']} clients per round): "
      f"{flower['ratio']:.0f}x (target {FLOWER_TARGET_RATIO:g}x, "
      f"{'met' if flower['met'] else 'NOT met'})."
    )
  print(f"Command: {command}")
  print(f"Results: {output}")


if __name__ == "__main__":
  app.run(main)
