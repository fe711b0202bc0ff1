r"""Rounds and bytes to the pooled optimum on Fed-Heart-Disease.

Every method trains L2-regularized logistic regression across the four
Fed-Heart-Disease hospitals in float64, all four hospitals every round.
After each round the script computes on the host the objective

  f(w) = mean over the pooled training rows of the logistic loss
         + (l2 / 2) ||w||^2,   l2 = 1e-3,

at the global model, and its suboptimality f(w_t) - f(w*). The pooled
optimum w* comes from scipy's L-BFGS-B on the pooled training rows
(gradient norm below 1e-7). It also sums each round's `uplink_bytes` and
`downlink_bytes` metrics into the cumulative bytes.

Methods and their configs (all with `float64 = True`):

- "newton": exact federated Newton (`fed_heart_disease_newton.py`).
- "fedns": FedNS, a 10-row Gaussian sketch per client
  (`fed_heart_disease_fedns.py`).
- "flens_paper": FLeNS (Gupta et al., arXiv:2409.15216) with derivatives
  at the Nesterov look-ahead point, as the paper's summary reads, and the
  default constant momentum beta = 0.1 (`fed_heart_disease_flens.py`).
- "flens_nesterov": the same with the momentum schedule
  beta_t = (t - 1) / (t + 2) (`algorithm.beta_schedule = "nesterov"`).
- "flens_code": FLeNS as the authors' MATLAB code reads, derivatives at
  w_t (`algorithm.lookahead = "code"`).
- "fedavg", "fedavg_qsgd", "fedavg_topk": FedAvg with the default client
  settings of `fed_heart_disease.py`, uncompressed, with QSGD on the uplink
  (16 levels) and with top-k on the uplink (fraction 0.25, error
  feedback), from `fed_heart_disease_compressed.py`.

NOTE: FedAvg's clients minimize the unregularized mean loss (the FedAvg
family has no L2 term). Their suboptimality is still measured on the
regularized objective f above, so their gap does not tend to zero; it
tends to f(w_unregularized) - f(w*), a small positive number.

A seed sets the model's initialization, the round keys (sketches,
minibatches, QSGD's random rounding). For each method and tolerance
(1e-4, 1e-6) the table gives the rounds and the cumulative uplink plus
downlink bytes until the suboptimality first drops to the tolerance, as
the range over seeds, and the number of seeds that reached it.

Run from the repository root:
  python benchmarks/communication.py
  python benchmarks/communication.py --quick --output=/tmp/quick.json
"""

from __future__ import annotations

import os
import pathlib
import shlex
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402
import scipy.special  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from fedjax_med.training import experiment, run_metadata  # noqa: E402
from fedjax_med.training.config_files import load_config_file  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
L2 = 1e-3
TOLERANCES = (1e-4, 1e-6)
METHODS = (
  "newton",
  "fedns",
  "flens_paper",
  "flens_nesterov",
  "flens_code",
  "fedavg",
  "fedavg_qsgd",
  "fedavg_topk",
)
DISPLAY_NAMES = {
  "newton": "Newton (exact)",
  "fedns": "FedNS (m=10)",
  "flens_paper": "FLeNS, paper look-ahead, beta 0.1 (m=10)",
  "flens_nesterov": "FLeNS, paper look-ahead, beta (t-1)/(t+2) (m=10)",
  "flens_code": "FLeNS, code reading (m=10)",
  "fedavg": "FedAvg",
  "fedavg_qsgd": "FedAvg + QSGD uplink",
  "fedavg_topk": "FedAvg + top-k uplink, error feedback",
}
# Rounds per method in the full run: second-order methods converge in tens
# of rounds, FedAvg's minibatch SGD needs many more.
ROUNDS = {
  "newton": 10,
  "fedns": 30,
  "flens_paper": 30,
  "flens_nesterov": 30,
  "flens_code": 30,
  "fedavg": 300,
  "fedavg_qsgd": 300,
  "fedavg_topk": 300,
}
QUICK_ROUNDS = 3
QUICK_METHODS = ("newton", "flens_code", "fedavg_qsgd")

_METHODS = flags.DEFINE_list(
  "methods", list(METHODS), f"Comma-separated methods: any of {METHODS}."
)
_SEEDS = flags.DEFINE_list(
  "seeds", ["0", "1", "2", "3"], "Comma-separated integer seeds."
)
_NUM_ROUNDS = flags.DEFINE_integer(
  "num_rounds", None, "Rounds of every method; unset uses ROUNDS."
)
_OUTPUT = flags.DEFINE_string(
  "output",
  "benchmarks/results/communication.json",
  "Path of the JSON results file; the plot goes next to it as .png.",
)
_QUICK = flags.DEFINE_bool(
  "quick",
  False,
  f"Smoke run: seed 0, {QUICK_ROUNDS} rounds, methods "
  f"{','.join(QUICK_METHODS)}. Flags passed explicitly still apply.",
)


def method_config(method: str) -> ml_collections.ConfigDict:
  """Returns the config that the benchmark runs for `method`."""
  if method not in METHODS:
    raise ValueError(f"method {method!r} is unknown; use one of {METHODS}.")
  if method == "newton":
    config = load_config_file(CONFIG_DIR / "fed_heart_disease_newton.py")
  elif method == "fedns":
    config = load_config_file(CONFIG_DIR / "fed_heart_disease_fedns.py")
  elif method.startswith("flens"):
    config = load_config_file(CONFIG_DIR / "fed_heart_disease_flens.py")
    if method == "flens_code":
      config.algorithm.lookahead = "code"
    if method == "flens_nesterov":
      config.algorithm.beta_schedule = "nesterov"
  else:
    config = load_config_file(CONFIG_DIR / "fed_heart_disease_compressed.py")
    config.float64 = True
    uplink = {"fedavg": "identity", "fedavg_qsgd": "qsgd"}
    config.compression.uplink.name = uplink.get(method, "top_k")
    config.compression.uplink.fraction = 0.25
  if "l2" in config.algorithm and config.algorithm.l2 != L2:
    raise ValueError(f"{method} uses l2={config.algorithm.l2}, not {L2}.")
  config.progress_bar = False
  return config


def pooled_objective(data) -> tuple[float, callable]:
  """Returns f(w*) and a function from global params to f(w)."""
  x, y = data.train.pooled()
  x = np.hstack([np.asarray(x, np.float64), np.ones((len(x), 1))])
  y = np.asarray(y, np.float64)

  def risk(w):
    z = x @ w
    return np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * L2 * w @ w

  def gradient(w):
    return x.T @ (scipy.special.expit(x @ w) - y) / len(y) + L2 * w

  result = scipy.optimize.minimize(
    risk,
    np.zeros(x.shape[1]),
    jac=gradient,
    method="L-BFGS-B",
    options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10000},
  )
  norm = np.linalg.norm(gradient(result.x))
  if norm > 1e-7:
    raise RuntimeError(f"L-BFGS-B stopped with gradient norm {norm:.2e}.")

  def risk_of(params):
    dense = params["Dense_0"]
    kernel = np.asarray(dense["kernel"], np.float64)[:, 0]
    w = np.concatenate([kernel, np.asarray(dense["bias"], np.float64)])
    return float(risk(w))

  return float(result.fun), risk_of


def run_once(method: str, seed: int, num_rounds: int) -> dict:
  """Runs one method for one seed and returns its per-round traces."""
  config = method_config(method)
  config.seed = seed
  data = experiment.load_data(config)
  model = experiment.build_model(config, data)
  algorithm = experiment.build_algorithm(config, model, data)
  optimum, risk_of = pooled_objective(data)

  init_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
  variables = model.init(init_key, jnp.asarray(data.train.x[0, :1]))
  state = algorithm.init(init_key, experiment.as_float64(variables))
  run_round = jax.jit(algorithm.run_round)
  device_data = jax.device_put(data)

  gaps, uplink, downlink = [], [], []
  for r in range(num_rounds):
    state, metrics = run_round(
      state, device_data, jax.random.fold_in(run_key, r)
    )
    gaps.append(risk_of(state.params) - optimum)
    uplink.append(int(round(float(metrics["uplink_bytes"]))))
    downlink.append(int(round(float(metrics["downlink_bytes"]))))

  cumulative = np.cumsum(np.add(uplink, downlink)).tolist()
  return {
    "seed": seed,
    "optimum": optimum,
    "suboptimality": gaps,
    "uplink_bytes": uplink,
    "downlink_bytes": downlink,
    "cumulative_bytes": cumulative,
    "to_target": {
      str(tol): to_target(gaps, cumulative, tol) for tol in TOLERANCES
    },
  }


def to_target(gaps, cumulative, tolerance) -> dict | None:
  """Returns the first round (1-based) and bytes with gap <= tolerance."""
  for r, gap in enumerate(gaps):
    if gap <= tolerance:
      return {"rounds": r + 1, "bytes": int(cumulative[r])}
  return None


def _range(values: list[int]) -> str:
  low, high = min(values), max(values)
  return f"{low:,}" if low == high else f"{low:,}-{high:,}"


def format_cell(runs: list[dict], tolerance: float, key: str) -> str:
  """Formats the range over seeds of rounds or bytes to `tolerance`."""
  hits = [run["to_target"][str(tolerance)] for run in runs]
  reached = [hit[key] for hit in hits if hit is not None]
  rounds = len(runs[0]["suboptimality"])
  if not reached:
    return f"not reached in {rounds}"
  cell = _range(reached)
  if len(reached) < len(runs):
    cell += f" ({len(reached)}/{len(runs)} seeds)"
  return cell


def format_table(results: dict[str, dict]) -> str:
  """Formats rounds and bytes to each tolerance as a markdown table."""
  header = ["method", "seeds", "bytes per round"]
  for tol in TOLERANCES:
    header += [f"rounds to {tol:g}", f"bytes to {tol:g}"]
  header.append("final gap (median)")
  lines = [
    "| " + " | ".join(header) + " |",
    "|---" * len(header) + "|",
  ]
  for method, result in results.items():
    runs = result["runs"]
    per_round = runs[0]["uplink_bytes"][0] + runs[0]["downlink_bytes"][0]
    cells = [DISPLAY_NAMES[method], str(len(runs)), f"{per_round:,}"]
    for tol in TOLERANCES:
      cells += [
        format_cell(runs, tol, "rounds"),
        format_cell(runs, tol, "bytes"),
      ]
    final = np.median([run["suboptimality"][-1] for run in runs])
    cells.append(f"{final:.1e}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(results: dict[str, dict], path: str) -> None:
  """Saves suboptimality against cumulative bytes and against rounds."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (by_bytes, by_rounds) = plt.subplots(1, 2, figsize=(12, 4.5))
  for method, result in results.items():
    run = result["runs"][0]
    gaps = np.maximum(np.asarray(run["suboptimality"]), 1e-16)
    rounds = np.arange(1, len(gaps) + 1)
    by_bytes.plot(run["cumulative_bytes"], gaps, label=DISPLAY_NAMES[method])
    by_rounds.plot(rounds, gaps, label=DISPLAY_NAMES[method])
  for axis, label in ((by_bytes, "cumulative bytes"), (by_rounds, "round")):
    axis.set_yscale("log")
    axis.set_xlabel(label)
    axis.set_ylabel("f(w_t) - f(w*)")
    for tol in TOLERANCES:
      axis.axhline(tol, color="gray", linestyle=":", linewidth=0.8)
  by_bytes.set_xscale("log")
  by_rounds.set_xscale("log")
  by_rounds.legend(fontsize=8)
  fig.suptitle("Fed-Heart-Disease logistic regression, l2 = 1e-3 (seed 0)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _resolve_options() -> tuple[list[str], list[int], int | None]:
  methods, seeds, num_rounds = _METHODS.value, _SEEDS.value, _NUM_ROUNDS.value
  if _QUICK.value:
    if not flags.FLAGS["methods"].present:
      methods = list(QUICK_METHODS)
    if not flags.FLAGS["seeds"].present:
      seeds = ["0"]
    if not flags.FLAGS["num_rounds"].present:
      num_rounds = QUICK_ROUNDS
  for method in methods:
    if method not in METHODS:
      raise app.UsageError(
        f"--methods contains {method!r}, which is unknown; use any of "
        f"{','.join(METHODS)}."
      )
  try:
    seed_values = [int(seed) for seed in seeds]
  except ValueError as error:
    raise app.UsageError(
      f"--seeds={','.join(seeds)} is invalid; pass integers, e.g. 0,1,2."
    ) from error
  if not methods or not seed_values:
    raise app.UsageError("--methods and --seeds must each name at least one.")
  if num_rounds is not None and num_rounds < 1:
    raise app.UsageError(
      f"--num_rounds={num_rounds} is invalid; pass a positive integer."
    )
  return methods, seed_values, num_rounds


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  methods, seeds, num_rounds = _resolve_options()
  logging.set_verbosity(logging.WARNING)
  command = "python " + shlex.join(sys.argv)

  start = time.perf_counter()
  results = {}
  for method in methods:
    rounds = num_rounds or ROUNDS[method]
    # Exact Newton draws nothing random after initialization.
    method_seeds = seeds[:1] if method == "newton" else seeds
    runs = []
    for seed in method_seeds:
      run_start = time.perf_counter()
      run = run_once(method, seed, rounds)
      run["seconds"] = time.perf_counter() - run_start
      runs.append(run)
      print(
        f"{method} seed {seed}: final gap {run['suboptimality'][-1]:.2e} "
        f"after {rounds} rounds ({run['seconds']:.1f} s)",
        flush=True,
      )
    results[method] = {
      "config": method_config(method).to_dict(),
      "num_rounds": rounds,
      "runs": runs,
    }
  total_seconds = time.perf_counter() - start

  table = format_table(results)
  metadata = run_metadata.collect_metadata(
    command, (*run_metadata.DEFAULT_PACKAGES, "scipy")
  )
  output = os.path.abspath(_OUTPUT.value)
  os.makedirs(os.path.dirname(output), exist_ok=True)
  plot_path = os.path.splitext(output)[0] + ".png"
  plot(results, plot_path)
  experiment.write_json(
    output,
    {
      "metadata": metadata,
      "l2": L2,
      "tolerances": list(TOLERANCES),
      "seeds": seeds,
      "results": results,
      "table": table,
      "plot": plot_path,
      "total_seconds": total_seconds,
    },
  )

  machine = metadata["machine"]
  print()
  print(
    "Rounds and cumulative uplink + downlink bytes until f(w_t) - f(w*) "
    "<= tolerance (range over seeds)."
  )
  print()
  print(table)
  print()
  print(f"Command: {command}")
  print(f"Date: {metadata['date']}")
  print(
    f"Machine: {machine['platform']}, {machine['cpu_model']}, "
    f"{machine['cpu_count']} CPUs, JAX backend {machine['jax_backend']}."
  )
  print(f"Total time: {total_seconds:.0f} s")
  print(f"Results: {output}")
  print(f"Plot: {plot_path}")


if __name__ == "__main__":
  app.run(main)
