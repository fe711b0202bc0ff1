"""Evaluation protocols: personalized evaluation and leave-one-site-out.

Personalized evaluation. An algorithm whose clients deploy their own model
(`FederatedAlgorithm.client_variables` is set, as for Ditto) is evaluated
with client k's model on client k's test split. The result, under
"personalized" in `final_metrics.json`, has the keys of
`metrics.classification.evaluate_clients` ("per_client", "pooled" over every
site's test rows each predicted by its own site's model, "client_mean",
"example_weighted", "worst_client") plus "source": "client_models", and
every evaluation writes `eval/personalized/...` scalars to `metrics.jsonl`.
For algorithms without client models the personalized table is the global
model's per-site table, labelled "source": "global_model", and nothing
extra is written to `metrics.jsonl`.

Leave-one-site-out (`config.protocol = "leave_one_site_out"`). For each site
s, the configured algorithm trains on every other site in
`<workdir>/holdout_<site>` (one full run with its own metrics, checkpoints
and plots), and its final global model is evaluated on site s, which it has
never seen. `config.holdout_rows` selects site s's rows: "all" (default,
train and test rows together, since no row of an unseen site was used) or
"test" (its test split only, comparable with the standard per-site table).
When `config.data.standardize` is True, the features are standardized with
statistics of the training sites' train splits only, so the held-out site
does not inform the preprocessing either. A cohort larger than the training
sites is capped to their number. The summary under "leave_one_site_out"
holds one entry per held-out site, the mean over sites and the worst site.
"""

from __future__ import annotations

import copy
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fedjax_med.algorithms.registry import build_algorithm
from fedjax_med.core.algorithm import FederatedAlgorithm
from fedjax_med.data.federated_data import FederatedData, stack_clients
from fedjax_med.data.standardize import (
  aggregate_feature_statistics,
  apply_standardization,
  feature_statistics,
)
from fedjax_med.metrics.classification import format_client_table
from fedjax_med.training.checkpoint import Checkpointer
from fedjax_med.training.evaluation import evaluate, make_predict_fn

PROTOCOLS = ("standard", "leave_one_site_out")
HOLDOUT_ROWS = ("all", "test")
# Metrics summarized over held-out sites.
HOLDOUT_METRICS = ("accuracy", "balanced_accuracy", "auroc")
_BASELINES = ("pooled", "local")


def protocol_name(config: ml_collections.ConfigDict) -> str:
  """Returns `config.protocol` ("standard" when absent), validated.

  Raises:
    ValueError: For an unknown protocol or holdout_rows, or
      leave-one-site-out with a baseline.
  """
  protocol = config.get("protocol", "standard")
  if protocol not in PROTOCOLS:
    raise ValueError(
      f"protocol={protocol!r} is unknown; use one of {PROTOCOLS}."
    )
  rows = config.get("holdout_rows", "all")
  if rows not in HOLDOUT_ROWS:
    raise ValueError(
      f"holdout_rows={rows!r} is unknown; use one of {HOLDOUT_ROWS}."
    )
  name = config.algorithm.name
  if protocol == "leave_one_site_out" and name in _BASELINES:
    raise ValueError(
      f"protocol='leave_one_site_out' does not apply to the {name!r} "
      "baseline, which has no single global model to test on an unseen "
      "site; use a federated algorithm such as fedavg."
    )
  return protocol


def loading_config(
  config: ml_collections.ConfigDict,
) -> ml_collections.ConfigDict:
  """Returns the config to load data with for `config`'s protocol.

  Leave-one-site-out loads unstandardized features and standardizes them
  per held-out site (see `holdout_data`).
  """
  if protocol_name(config) != "leave_one_site_out":
    return config
  if not config.data.get("standardize", False):
    return config
  config = copy.deepcopy(config)
  with config.unlocked():
    config.data.standardize = False
  return config


# Personalized evaluation.


class PersonalizedEvaluator:
  """Evaluates each client's own model on its own test split.

  Args:
    model: The network.
    algorithm: The trained algorithm.
    train_data: The data the algorithm trains on.
    eval_data: The data whose test splits are evaluated.
  """

  def __init__(
    self,
    model,
    algorithm: FederatedAlgorithm,
    train_data: FederatedData,
    eval_data: FederatedData,
  ):
    self._client_variables = algorithm.client_variables
    if (
      self._client_variables is not None
      and train_data.client_names != eval_data.client_names
    ):
      # NOTE: only the baselines train on other clients than they evaluate,
      # and none of them has client models.
      logging.warning(
        "The training clients %s differ from the evaluated sites %s, so the "
        "personalized table uses the global model.",
        train_data.client_names,
        eval_data.client_names,
      )
      self._client_variables = None
    self._eval_data = eval_data
    self._predict_fn = None
    if self._client_variables is not None:
      self._predict_fn = make_predict_fn(model, per_client_variables=True)

  @property
  def has_client_models(self) -> bool:
    return self._client_variables is not None

  def __call__(self, state, global_result: dict, tail=None) -> dict:
    """Returns the personalized results of `state`.

    Args:
      state: The algorithm state.
      global_result: The global model's `evaluate` result on the same test
        splits, returned (labelled) when there are no client models.
      tail: Tail classes for the long-tail metrics, or None.
    """
    if self._client_variables is None:
      return {**global_result, "source": "global_model"}
    result = evaluate(
      self._predict_fn,
      self._client_variables(state),
      self._eval_data.test,
      self._eval_data.client_names,
      tail,
    )
    return {**result, "source": "client_models"}


def personalized_scalars(result: dict) -> dict[str, float]:
  """Returns the `eval/personalized/...` scalars of client models.

  Empty for the global model's table, whose numbers are already logged
  under `eval/`.
  """
  if result["source"] != "client_models":
    return {}
  scalars = {}
  for group in ("pooled", "client_mean", "example_weighted"):
    for metric, value in result[group].items():
      scalars[f"eval/personalized/{group}/{metric}"] = value
  for client, metrics in result["per_client"].items():
    for metric, value in metrics.items():
      scalars[f"eval/personalized/{client}/{metric}"] = value
  worst = result["worst_client"]["accuracy"]
  scalars["eval/personalized/worst_client/accuracy"] = worst
  return scalars


def personalized_summary(result: dict) -> dict:
  """Returns the "personalized" entry of `final_metrics.json`."""
  keys = ("source", "per_client", "pooled", "client_mean", "example_weighted")
  summary = {key: result[key] for key in keys}
  summary["worst_client"] = result["worst_client"]
  return summary


def log_personalized(result: dict, rounds: int) -> None:
  """Logs the personalized per-site table."""
  if result["source"] == "client_models":
    title = "Each site's own model on its own test split"
  else:
    title = "Personalized table = global model (no client models)"
  logging.info(
    "%s after %d rounds:\n%s", title, rounds, format_client_table(result)
  )


# Leave-one-site-out.


def _site_dir_name(name: str) -> str:
  return "holdout_" + name.replace(" ", "_").replace(os.sep, "_")


def holdout_data(
  data: FederatedData, site: int, standardize: bool
) -> tuple[FederatedData, FederatedData]:
  """Splits `data` into the training sites and the held-out `site`.

  Args:
    data: Every site, with unstandardized features if `standardize`.
    site: Index of the held-out site.
    standardize: Standardize both parts with the mean and standard
      deviation of the training sites' train splits.

  Returns:
    `(train_data, holdout)`: the other sites with their train and test
    splits, and the held-out site alone as a one-client `FederatedData`
    (same train and test rows as in `data`).
  """
  others = [k for k in range(data.num_clients) if k != site]
  if standardize:
    mean, std = aggregate_feature_statistics(
      [feature_statistics(data.train.client(k)[0]) for k in others]
    )

    def prepare(x, y):
      return apply_standardization(x, mean, std), y
  else:

    def prepare(x, y):
      return x, y

  def clients(split, ids):
    return [prepare(*split.client(k)) for k in ids]

  train_data = data.replace(
    train=stack_clients(clients(data.train, others)),
    test=stack_clients(clients(data.test, others)),
    client_names=tuple(data.client_names[k] for k in others),
  )
  holdout = data.replace(
    train=stack_clients(clients(data.train, [site])),
    test=stack_clients(clients(data.test, [site])),
    client_names=(data.client_names[site],),
  )
  return train_data, holdout


def holdout_config(
  config: ml_collections.ConfigDict, num_training_sites: int
) -> ml_collections.ConfigDict:
  """Returns `config` with the cohort capped to the training sites."""
  config = copy.deepcopy(config)
  requested = config.cohort.clients_per_round
  if requested > num_training_sites:
    logging.info(
      "Leave-one-site-out: clients_per_round=%d capped to the %d training "
      "sites.",
      requested,
      num_training_sites,
    )
    with config.unlocked():
      config.cohort.clients_per_round = num_training_sites
  return config


def restore_global_variables(config, model, train_data, workdir: str):
  """Returns the global variables of the newest checkpoint in `workdir`."""
  algorithm = build_algorithm(config, model, train_data)
  init_key, run_key = jax.random.split(jax.random.PRNGKey(config.seed))
  sample_x = jnp.asarray(train_data.train.x[0, :1])
  state_like = algorithm.init(init_key, model.init(init_key, sample_x))
  checkpointer = Checkpointer(workdir)
  try:
    latest = checkpointer.latest_round()
    if latest is None:
      raise ValueError(
        f"no checkpoint in {checkpointer.directory} to evaluate on the "
        "held-out site; rerun without --resume."
      )
    state, _ = checkpointer.restore(latest, state_like, run_key)
  finally:
    checkpointer.close()
  return algorithm.global_variables(state)


def evaluate_holdout(model, variables, holdout: FederatedData, rows: str):
  """Evaluates `variables` on the held-out site's `rows` ("all" or "test")."""
  if rows == "all":
    train_x, train_y = holdout.train.client(0)
    test_x, test_y = holdout.test.client(0)
    split = stack_clients(
      [(np.concatenate([train_x, test_x]), np.concatenate([train_y, test_y]))]
    )
  else:
    split = holdout.test
  result = evaluate(
    make_predict_fn(model), variables, split, holdout.client_names
  )
  return result["per_client"][holdout.client_names[0]]


def summarize_holdouts(per_site: dict[str, dict]) -> dict:
  """Returns the mean over held-out sites and the worst site."""
  mean = {}
  for metric in HOLDOUT_METRICS:
    values = np.asarray([m[metric] for m in per_site.values()], np.float64)
    finite = values[np.isfinite(values)]
    mean[metric] = float(finite.mean()) if finite.size else float("nan")
  sizes = np.asarray([m["num_examples"] for m in per_site.values()], float)
  accuracies = np.asarray([m["accuracy"] for m in per_site.values()])
  names = list(per_site)
  worst = names[int(np.nanargmin(accuracies))]
  return {
    "mean": mean,
    # Every row of every site, each predicted by the model that never saw
    # its site.
    "example_weighted_accuracy": float(
      np.sum(accuracies * sizes) / sizes.sum()
    ),
    "worst_site": {"name": worst, "accuracy": per_site[worst]["accuracy"]},
  }


def format_holdout_table(summary: dict) -> str:
  """Formats the leave-one-site-out results, one row per held-out site."""
  rows = [*summary["per_site"].items(), ("mean", summary["mean"])]
  width = max(len("held-out site"), *(len(name) for name, _ in rows)) + 2
  header = "held-out site".ljust(width)
  header += "".join(f"{m:>20}" for m in HOLDOUT_METRICS) + f"{'n':>8}"
  lines = [header, "-" * len(header)]
  for name, metrics in rows:
    line = name.ljust(width)
    line += "".join(f"{metrics[m]:>20.4f}" for m in HOLDOUT_METRICS)
    n = metrics.get("num_examples")
    line += f"{n:>8d}" if n is not None else " " * 8
    lines.append(line)
  worst = summary["worst_site"]
  lines.append(f"worst site: {worst['name']} ({worst['accuracy']:.4f})")
  return "\n".join(lines)


def run_leave_one_site_out(
  config: ml_collections.ConfigDict,
  data: FederatedData,
  model,
  workdir: str,
  train_fn,
) -> dict:
  """Trains once per held-out site and tests each model on its site.

  Args:
    config: Experiment config with `protocol="leave_one_site_out"`.
    data: Every site, loaded with `loading_config(config)`.
    model: The network.
    workdir: Parent directory; held-out site s runs in `holdout_<s>`.
    train_fn: `(config, train_data, eval_data, workdir) -> final metrics`,
      which must leave a checkpoint of the last round in `workdir`.

  Returns:
    The final metrics, with "leave_one_site_out": {"per_site", "mean",
    "example_weighted_accuracy", "worst_site", "holdout_rows"}.

  Raises:
    ValueError: For fewer than two sites.
  """
  if data.num_clients < 2:
    raise ValueError(
      f"leave-one-site-out needs at least 2 sites; {data.name} has "
      f"{data.num_clients}. Use protocol='standard'."
    )
  rows = config.get("holdout_rows", "all")
  standardize = bool(config.data.get("standardize", False))
  per_site, in_distribution = {}, {}
  for site, name in enumerate(data.client_names):
    train_data, holdout = holdout_data(data, site, standardize)
    site_config = holdout_config(config, train_data.num_clients)
    site_dir = os.path.join(workdir, _site_dir_name(name))
    logging.info("Leave-one-site-out: training without %s.", name)
    result = train_fn(site_config, train_data, train_data, site_dir)
    variables = restore_global_variables(
      site_config, model, train_data, site_dir
    )
    per_site[name] = evaluate_holdout(model, variables, holdout, rows)
    in_distribution[name] = {
      "rounds": result["rounds"],
      "pooled_test_accuracy": result["pooled_test_accuracy"],
      "worst_client": result["worst_client"],
    }

  summary = {"per_site": per_site, **summarize_holdouts(per_site)}
  summary["holdout_rows"] = rows
  logging.info(
    "Leave-one-site-out, global model on each unseen site (%s rows):\n%s",
    rows,
    format_holdout_table(summary),
  )
  return {
    "algorithm": config.algorithm.name,
    "protocol": "leave_one_site_out",
    "dataset": data.name,
    "seed": config.seed,
    "rounds": min(r["rounds"] for r in in_distribution.values()),
    "pooled_test_accuracy": summary["example_weighted_accuracy"],
    "worst_client": summary["worst_site"],
    "leave_one_site_out": summary,
    # Each run's global model on its training sites' test splits.
    "training_sites": in_distribution,
    "config": config.to_dict(),
  }
