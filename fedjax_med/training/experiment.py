"""The experiment loop: rounds, evaluation, metrics, checkpoints.

`run_experiment(config, workdir)` loads the data and model named by the
config, builds the algorithm, jit-compiles its round once, and runs
`config.num_rounds` rounds. Every `eval_every` rounds it evaluates the global
model on each client's test split and on the pooled test set. Metrics go to
`<workdir>/metrics.jsonl` and TensorBoard; checkpoints to
`<workdir>/checkpoints`; at the end it writes `<workdir>/final_metrics.json`
and a PNG plot per metric. For tasks with more than two classes the
evaluation adds the long-tail metrics of `fedjax_med.metrics.long_tail`
(balanced accuracy, macro F1, recall per class and on the tail classes, per
site and pooled) under "long_tail". `long_tail_classes` fixes the tail.
Algorithms with per-client models (Ditto) are also evaluated with each
site's own model on its own test split, under "personalized", and
`config.protocol="leave_one_site_out"` trains once per held-out site; both
are described in `protocols.py`.

Randomness: one key per run from `config.seed`, split into an init key and a
run key; round `r` uses `fold_in(run_key, r)`, so a resumed run draws the same
keys as an uninterrupted one and the two end with bit-identical parameters.

Differential privacy (`config.privacy.mode` "client" or "example"): before the
algorithm is built, a positive `target_epsilon` is turned into the noise
multiplier the algorithm runs with (unless `privacy.calibrate_noise` is False;
see `privacy_budget.py`). Epsilon is logged every round as
`privacy/epsilon`. With `stop_at_budget`, training stops before a round that
would take epsilon past `target_epsilon`, saves a checkpoint and records
`stopped_at_budget` in `final_metrics.json`. The accountant's state is saved
in every checkpoint, so a resumed run reports the same epsilon as an
uninterrupted one.

Communication: when rounds log `uplink_bytes` and `downlink_bytes`,
`final_metrics.json` holds their sums over the completed rounds as
`total_uplink_bytes` and `total_downlink_bytes`, read back from
`metrics.jsonl` so that a resumed run counts the rounds before the resume.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from absl import logging

from fedjax_med.algorithms.registry import build_algorithm
from fedjax_med.core import sharding
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.data.registry import load_dataset
from fedjax_med.losses.class_statistics import (
  global_class_counts,
  tail_classes,
)
from fedjax_med.metrics.classification import format_client_table
from fedjax_med.metrics.long_tail import format_long_tail_table
from fedjax_med.models.registry import get_model
from fedjax_med.training import baselines, privacy_budget, protocols
from fedjax_med.training.checkpoint import Checkpointer
from fedjax_med.training.evaluation import evaluate, make_predict_fn
from fedjax_med.training.plotting import plot_client_metrics
from fedjax_med.training.writers import MetricWriter, read_jsonl

PLOTTED_METRICS = ("accuracy", "auroc", "loss")


def load_data(config: ml_collections.ConfigDict) -> FederatedData:
  """Loads the dataset named by `config.data`.

  With `config.float64` the features are cast to float64.
  """
  options = config.data.to_dict()
  name = options.pop("name")
  data = load_dataset(name, **options)
  if config.get("float64", False):
    data = data.replace(
      train=data.train.replace(x=data.train.x.astype(np.float64)),
      test=data.test.replace(x=data.test.x.astype(np.float64)),
    )
  return data


def as_float64(tree: Any) -> Any:
  """Casts the floating-point leaves of `tree` to float64."""
  return jax.tree.map(
    lambda leaf: (
      leaf.astype(jnp.float64)
      if jnp.issubdtype(leaf.dtype, jnp.floating)
      else leaf
    ),
    tree,
  )


def build_model(config: ml_collections.ConfigDict, data: FederatedData):
  """Builds the model named by `config.model` for `data`."""
  options = config.model.to_dict()
  name = options.pop("name")
  return get_model(
    name,
    num_classes=data.num_classes,
    feature_shape=data.feature_shape,
    **options,
  )


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for loop settings that cannot run."""
  for field in ("num_rounds", "eval_every", "checkpoint_every"):
    value = config[field]
    if not isinstance(value, int) or value < 1:
      raise ValueError(
        f"{field}={value!r} must be a positive integer; pass e.g. "
        f"--config.{field}=10."
      )
  num_devices = config.get("cohort", {}).get("num_devices", 0)
  if not isinstance(num_devices, int) or num_devices < 0:
    raise ValueError(
      f"cohort.num_devices={num_devices!r} must be a non-negative integer; "
      "pass 0 or 1 for one device, or the number of devices to shard each "
      "round's cohort over, e.g. --config.cohort.num_devices=2."
    )


def _jsonable(value: Any) -> Any:
  """Converts numpy scalars and NaN to JSON values (NaN becomes null)."""
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (np.generic, np.ndarray)):
    value = value.item() if np.ndim(value) == 0 else value.tolist()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def write_json(path: str, payload: dict) -> None:
  """Writes `payload` as JSON via a temporary file and an atomic rename."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(_jsonable(payload), f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def long_tail_classes(
  config: ml_collections.ConfigDict, data: FederatedData
) -> list[int] | None:
  """Returns the tail classes for the long-tail metrics, or None.

  Tasks with more than two classes get them: the rarest classes that
  together hold at most `config.long_tail.tail_fraction` (default 0.2) of
  all sites' training examples.
  """
  if data.num_classes <= 2:
    return None
  section = config.get("long_tail", None)
  fraction = 0.2 if section is None else section.get("tail_fraction", 0.2)
  counts = global_class_counts(data.train, data.num_classes)
  return tail_classes(counts, fraction).tolist()


BYTE_METRICS = ("uplink_bytes", "downlink_bytes")


def communication_totals(workdir: str, num_rounds: int) -> dict[str, int]:
  """Sums the byte metrics of rounds 1 to `num_rounds` in `metrics.jsonl`.

  A round logged twice (a resume from an older checkpoint) counts once,
  with its last record. Metrics that no round logged are left out.
  """
  latest = {}
  for record in read_jsonl(os.path.join(workdir, "metrics.jsonl")):
    if record["round"] <= num_rounds:
      latest[record["round"]] = record
  totals = {}
  for metric in BYTE_METRICS:
    values = [
      r[f"train/{metric}"] for r in latest.values() if f"train/{metric}" in r
    ]
    if values:
      totals[f"total_{metric}"] = int(sum(round(v) for v in values))
  return totals


def _eval_scalars(result: dict) -> dict[str, float]:
  scalars = {}
  if "long_tail" in result:
    for metric in ("balanced_accuracy", "macro_f1", "tail_recall"):
      value = result["long_tail"]["pooled"][metric]
      scalars[f"eval/long_tail/pooled/{metric}"] = value
  for group in ("pooled", "client_mean", "example_weighted"):
    for metric, value in result[group].items():
      scalars[f"eval/{group}/{metric}"] = value
  for client, metrics in result["per_client"].items():
    for metric, value in metrics.items():
      scalars[f"eval/{client}/{metric}"] = value
  scalars["eval/worst_client/accuracy"] = result["worst_client"]["accuracy"]
  return scalars


# More lines than this make the per-site plots unreadable and slow to draw.
MAX_PLOTTED_SITES = 12


def write_plots(
  workdir: str,
  client_names: tuple[str, ...],
  test_sizes: list[int] | None = None,
) -> list[str]:
  """Plots each metric per site over rounds from `metrics.jsonl`.

  With more than `MAX_PLOTTED_SITES` clients, only the clients with the most
  test examples are drawn (all of them remain in `metrics.jsonl`), next to
  the pooled curve.
  """
  records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  names = list(client_names)
  if len(names) > MAX_PLOTTED_SITES:
    sizes = test_sizes or [0] * len(names)
    order = sorted(range(len(names)), key=lambda k: -sizes[k])
    names = [names[k] for k in sorted(order[:MAX_PLOTTED_SITES])]
  paths = []
  for metric in PLOTTED_METRICS:
    path = os.path.join(workdir, f"{metric}_per_site.png")
    plot_client_metrics(records, metric, path, names)
    paths.append(path)
  return paths


def run_experiment(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  resume: bool = False,
) -> dict:
  """Runs the configured experiment and returns its final metrics.

  `config.algorithm.name` names a federated algorithm, or one of the
  baselines: "pooled" (centralized training on every site's training rows)
  and "local" (each site trains alone; one sub-run per site under
  `<workdir>/local_<site>`).

  Args:
    config: Experiment config (see `configs/fed_heart_disease.py`).
    workdir: Directory for metrics, checkpoints, plots and results.
    resume: Continue from the newest checkpoint in `workdir`.

  Returns:
    The dict written to `<workdir>/final_metrics.json`.

  Raises:
    ValueError: For invalid settings, or a `workdir` that holds checkpoints
      when `resume` is False.
    FloatingPointError: If the training loss becomes NaN or infinite; the
      last good checkpoint stays on disk.
  """
  validate_config(config)
  # A CPU run gets one device per shard if JAX has not started yet.
  sharding.request_cpu_devices(config.cohort.get("num_devices", 0))
  # `float64 = True` runs in double precision (convex benchmarks); x64 is
  # switched on before anything is built and switched off afterwards.
  if config.get("float64", False) and not jax.config.jax_enable_x64:
    jax.config.update("jax_enable_x64", True)
    try:
      return run_experiment(config, workdir, resume=resume)
    finally:
      jax.config.update("jax_enable_x64", False)
  protocol = protocols.protocol_name(config)
  data = load_data(protocols.loading_config(config))
  model = build_model(config, data)
  os.makedirs(workdir, exist_ok=True)
  logging.info(
    "Dataset %s: %d clients, train sizes %s, test sizes %s",
    data.name,
    data.num_clients,
    data.train.num_examples.tolist(),
    data.test.num_examples.tolist(),
  )
  name = config.algorithm.name
  if protocol == "leave_one_site_out":
    final = protocols.run_leave_one_site_out(
      config,
      data,
      model,
      workdir,
      lambda *args: train_and_evaluate(*args, model=model, resume=resume),
    )
  elif name == "local":
    final = baselines.run_local_baseline(
      config,
      data,
      workdir,
      lambda *args: train_and_evaluate(*args, model=model, resume=resume),
    )
  else:
    train_data = data
    if name == "pooled":
      config = baselines.pooled_config(config)
      train_data = baselines.pooled_train_data(data)
    final = train_and_evaluate(
      config, train_data, data, workdir, model=model, resume=resume
    )
    final["algorithm"] = name
  write_json(os.path.join(workdir, "final_metrics.json"), final)
  return final


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  train_data: FederatedData,
  eval_data: FederatedData,
  workdir: str,
  *,
  model,
  resume: bool,
) -> dict:
  """Trains on `train_data` and evaluates on `eval_data`'s test splits.

  The two differ only for the baselines (one pooled or single-site training
  client, every site's test split); for federated runs they are the same.
  """
  os.makedirs(workdir, exist_ok=True)
  checkpointer = Checkpointer(workdir)
  try:
    return _train_with_checkpointer(
      config,
      train_data,
      eval_data,
      workdir,
      checkpointer,
      model=model,
      resume=resume,
    )
  finally:
    checkpointer.close()


def _train_with_checkpointer(
  config: ml_collections.ConfigDict,
  train_data: FederatedData,
  eval_data: FederatedData,
  workdir: str,
  checkpointer: Checkpointer,
  *,
  model,
  resume: bool,
) -> dict:
  start = 0
  latest = checkpointer.latest_round()
  if latest is not None and not resume:
    raise ValueError(
      f"workdir {workdir!r} already holds checkpoints up to round "
      f"{latest}; pass --resume to continue that run or choose a new "
      "--workdir."
    )
  if latest is not None and latest > config.num_rounds:
    raise ValueError(
      f"the checkpoint in {workdir!r} is at round {latest}, beyond "
      f"num_rounds={config.num_rounds}; raise num_rounds to continue."
    )
  privacy = _setup_privacy(config, train_data, checkpointer, latest)
  if privacy is not None:
    config = privacy.config

  algorithm = build_algorithm(config, model, train_data)
  init_key, run_key = jax.random.split(jax.random.PRNGKey(config.seed))
  sample_x = jnp.asarray(train_data.train.x[0, :1])
  variables = model.init(init_key, sample_x)
  if config.get("float64", False):
    variables = as_float64(variables)
  state = algorithm.init(init_key, variables)
  if latest is not None:
    state, run_key = checkpointer.restore(latest, state, run_key)
    start = latest
    logging.info("Resumed from the checkpoint at round %d.", start)

  def save(completed: int) -> None:
    metadata = {}
    if privacy is not None:
      metadata["privacy"] = privacy.accountant.state_dict()
    checkpointer.save(completed, state, run_key, metadata)

  # Under cohort.num_devices > 1 the state and data are replicated on the
  # mesh that the round shards its cohort over.
  mesh = sharding.client_mesh(config.cohort.get("num_devices", 0))
  if mesh is not None:
    logging.info(
      "Sharding each round's cohort over %d devices: %s",
      mesh.devices.size,
      ", ".join(str(d) for d in mesh.devices.flat),
    )
  state = sharding.replicate(state, mesh)
  device_data = sharding.replicate(train_data, mesh)
  round_fn = sharding.jit_round(algorithm.run_round, mesh)
  predict_fn = make_predict_fn(model)
  tail = long_tail_classes(config, eval_data)
  personalize = protocols.PersonalizedEvaluator(
    model, algorithm, train_data, eval_data
  )
  result = None
  result_round = None
  completed = start
  saved_round = latest
  stopped_at_budget = False
  progress = tqdm.trange(
    start,
    config.num_rounds,
    desc=f"{config.algorithm.name} on {train_data.name}",
    disable=not config.get("progress_bar", True),
  )
  with MetricWriter(workdir) as writer:
    for round_index in progress:
      if privacy is not None and privacy.budget is not None:
        next_epsilon = privacy.accountant.epsilon(num_rounds=round_index + 1)
        if next_epsilon > privacy.budget:
          stopped_at_budget = True
          logging.info(
            "Stopping after %d rounds: round %d would bring epsilon to "
            "%.4f, above target_epsilon=%g.",
            completed,
            round_index + 1,
            next_epsilon,
            privacy.budget,
          )
          break
      state, metrics = round_fn(
        state, device_data, jax.random.fold_in(run_key, round_index)
      )
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not math.isfinite(metrics["train_loss"]):
        raise FloatingPointError(
          f"train_loss is {metrics['train_loss']} at round "
          f"{round_index + 1}; lower client.learning_rate (now "
          f"{config.client.learning_rate}) or server.learning_rate. The "
          f"last good checkpoint is in {checkpointer.directory}."
        )
      completed = round_index + 1
      scalars = {f"train/{k}": v for k, v in metrics.items()}
      postfix = {"loss": f"{metrics['train_loss']:.4f}"}
      if privacy is not None:
        privacy.accountant.step()
        scalars.update(privacy_budget.privacy_scalars(privacy))
        postfix["epsilon"] = f"{scalars['privacy/epsilon']:.3f}"

      last = completed == config.num_rounds
      if completed % config.eval_every == 0 or last:
        variables = algorithm.global_variables(state)
        result = evaluate(
          predict_fn, variables, eval_data.test, eval_data.client_names, tail
        )
        result_round = completed
        scalars.update(_eval_scalars(result))
        personalized = personalize(state, result, tail)
        scalars.update(protocols.personalized_scalars(personalized))
        postfix["pooled_acc"] = f"{result['pooled']['accuracy']:.3f}"
      progress.set_postfix(postfix)
      writer.write_scalars(completed, scalars)
      if completed % config.checkpoint_every == 0 or last:
        save(completed)
        saved_round = completed
  if saved_round != completed:
    save(completed)

  if result_round != completed:
    variables = algorithm.global_variables(state)
    result = evaluate(
      predict_fn, variables, eval_data.test, eval_data.client_names, tail
    )
    personalized = personalize(state, result, tail)
  logging.info(
    "Global model after %d rounds:\n%s",
    completed,
    format_client_table(result),
  )
  if "long_tail" in result:
    logging.info(
      "Long-tail metrics after %d rounds:\n%s",
      completed,
      format_long_tail_table(result["long_tail"]),
    )
  if personalize.has_client_models:
    protocols.log_personalized(personalized, completed)
  write_plots(
    workdir, eval_data.client_names, eval_data.test.num_examples.tolist()
  )
  final = {
    "algorithm": config.algorithm.name,
    "dataset": eval_data.name,
    "seed": config.seed,
    "rounds": completed,
    "pooled_test_accuracy": result["pooled"]["accuracy"],
    "pooled": result["pooled"],
    "per_client": result["per_client"],
    "client_mean": result["client_mean"],
    "example_weighted": result["example_weighted"],
    "worst_client": result["worst_client"],
    "personalized": protocols.personalized_summary(personalized),
    "config": config.to_dict(),
  }
  if "long_tail" in result:
    final["long_tail"] = result["long_tail"]
  if privacy is not None:
    final.update(privacy_budget.privacy_summary(privacy, stopped_at_budget))
  final.update(communication_totals(workdir, completed))
  return final


def _setup_privacy(
  config: ml_collections.ConfigDict,
  train_data: FederatedData,
  checkpointer: Checkpointer,
  latest: int | None,
) -> privacy_budget.PrivacySetup | None:
  """Builds the accountant, restoring it from the checkpoint at `latest`."""
  if privacy_budget.privacy_mode(config) == "none":
    return None
  restored_state = None
  if latest is not None:
    restored_state = checkpointer.restore_metadata(latest).get("privacy")
    if restored_state is None:
      raise ValueError(
        f"the checkpoint at round {latest} in {checkpointer.directory} has "
        "no privacy accountant state, so the privacy already spent is "
        "unknown; resume it with privacy.mode='none' or start a new run."
      )
  return privacy_budget.setup_privacy(config, train_data, restored_state)
