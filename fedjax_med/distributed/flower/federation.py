"""Site summaries and the round that the server and every site build alike.

Before the first round every site reports a summary of its training rows:
their count, per-feature sum and sum of squares (the statistics the
simulation's federated standardization adds up, `data.standardize`) and
its label histogram. The server adds them up into a `Federation`: every
site's row count and label histogram, and the pooled mean and standard
deviation. It sends the `Federation` with every training message, so the
sites learn these aggregates and nothing else about each other.

From the config and the `Federation` both ends build the same
`FederatedData` skeleton: zero features, and labels laid out to match each
site's histogram, padded to the largest site. From the skeleton they build
the model and the algorithm as `scripts/train.py` does (`build_model`,
`build_algorithm`). The skeleton only gives the algorithm its shapes, the
population size and the global class counts that some losses use; no
piece reads its features. Each site pads its own rows to the same size as
the simulation, because local training draws batches by permuting the
padded rows.
"""

from __future__ import annotations

import ast
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flwr.app import Array, ArrayRecord

from fedjax_med.algorithms.registry import build_algorithm
from fedjax_med.core.algorithm import FederatedAlgorithm, RoundPieces
from fedjax_med.core.client import ClientBatch
from fedjax_med.data.federated_data import FederatedData, stack_clients
from fedjax_med.data.standardize import (
  FeatureStatistics,
  aggregate_feature_statistics,
  apply_standardization,
  feature_statistics,
)
from fedjax_med.distributed.flower import sites
from fedjax_med.distributed.site_rounds import require_pieces
from fedjax_med.models.registry import get_model
from fedjax_med.training.config_files import load_config_file

PyTree = Any


def load_config(path: str, overrides: str = "") -> ml_collections.ConfigDict:
  """Loads a config file and applies `key=value` overrides.

  Args:
    path: A config file with `get_config()`, e.g.
      configs/fed_heart_disease.py.
    overrides: Whitespace-separated `key=value` items with dotted keys, as
      `--config.key=value` on scripts/train.py: `num_rounds=3
      client.learning_rate=0.1`. Values are Python literals, or strings.

  Raises:
    FileNotFoundError: If `path` does not exist.
    ValueError: If an item lacks `=`.
  """
  config = load_config_file(path)
  for item in overrides.split():
    key, sep, text = item.partition("=")
    if not sep or not key:
      raise ValueError(
        f"config override {item!r} is not key=value; write e.g. "
        "'num_rounds=3 client.learning_rate=0.1'."
      )
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    config.update_from_flattened_dict({key: value})
  return config


def check_deployable(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for settings a deployment does not run."""
  name = config.algorithm.name
  if name in ("pooled", "local"):
    raise ValueError(
      f"algorithm.name={name!r} is a simulation baseline, not a federated "
      "algorithm; deploy e.g. fedavg, fedprox or scaffold."
    )
  if config.get("protocol", "standard") != "standard":
    raise ValueError(
      f"protocol={config.protocol!r} runs only in simulation; use "
      "protocol='standard' in a deployment."
    )
  privacy = config.get("privacy", None)
  if privacy is not None and privacy.mode == "example":
    # The broadcast carries the round's client key, from which a site's
    # DP-SGD noise is drawn, so the server could subtract that noise.
    raise ValueError(
      "privacy.mode='example' draws each site's DP-SGD noise from the "
      "round key that the server broadcasts, so the server could remove "
      "it; deploy with privacy.mode='client' (noise added by the server) "
      "or 'none'."
    )
  if privacy is not None and privacy.get("secure_aggregation", False):
    raise ValueError(
      "privacy.secure_aggregation=True simulates the key agreement inside "
      "the round, so in a deployment the server would hold every pairwise "
      "mask; set privacy.secure_aggregation=False."
    )
  if privacy is not None and privacy.mode != "none":
    if privacy.get("target_epsilon", 0.0) > 0:
      raise ValueError(
        "privacy.target_epsilon > 0 asks the experiment loop to calibrate "
        "the noise and stop at the budget, which the deployment does not "
        "do; set privacy.target_epsilon=0 and privacy.noise_multiplier."
      )


class SiteSummary(NamedTuple):
  """A site's report before training: aggregates of its training rows.

  Attributes:
    client_id: The site's index in the dataset's client names.
    statistics: Count, sum and sum of squares of its training features.
    label_histogram: Training examples per class, `[num_classes]`.
    num_test: Its test rows.
  """

  client_id: int
  statistics: FeatureStatistics
  label_histogram: np.ndarray
  num_test: int


class Federation(NamedTuple):
  """Aggregates every site learns from the server.

  Attributes:
    num_train: Training rows per site, `[num_clients]`.
    num_test: Test rows per site, `[num_clients]`.
    label_histograms: `[num_clients, num_classes]` training labels.
    mean: Pooled training mean per feature (float64).
    std: Pooled training standard deviation per feature (float64).
  """

  num_train: np.ndarray
  num_test: np.ndarray
  label_histograms: np.ndarray
  mean: np.ndarray
  std: np.ndarray

  @property
  def capacity(self) -> int:
    """Padded training rows per site: the largest site's count."""
    return max(int(np.max(self.num_train)), 1)


def summarize_site(
  client_id: int, data: sites.SiteData, num_classes: int
) -> SiteSummary:
  """Returns the aggregates a site reports about its own rows."""
  x, y = data.train
  return SiteSummary(
    client_id=client_id,
    statistics=feature_statistics(x),
    label_histogram=np.bincount(y, minlength=num_classes).astype(np.int64),
    num_test=int(data.test[0].shape[0]),
  )


def summary_to_record(summary: SiteSummary) -> ArrayRecord:
  """Packs a `SiteSummary` for the reply to the server."""
  arrays = {
    "client_id": np.asarray(summary.client_id, np.int64),
    "count": np.asarray(summary.statistics.count, np.int64),
    "sum": summary.statistics.sum,
    "sum_sq": summary.statistics.sum_sq,
    "label_histogram": summary.label_histogram,
    "num_test": np.asarray(summary.num_test, np.int64),
  }
  return _arrays_record(arrays)


def summary_from_record(record: ArrayRecord) -> SiteSummary:
  """Unpacks a `SiteSummary` written by `summary_to_record`."""
  arrays = {key: record[key].numpy() for key in record.keys()}
  return SiteSummary(
    client_id=int(arrays["client_id"]),
    statistics=FeatureStatistics(
      count=int(arrays["count"]), sum=arrays["sum"], sum_sq=arrays["sum_sq"]
    ),
    label_histogram=arrays["label_histogram"],
    num_test=int(arrays["num_test"]),
  )


def federate(summaries: list[SiteSummary], num_clients: int) -> Federation:
  """Adds up the sites' summaries, one per client id.

  Raises:
    ValueError: If a client id is missing, repeated or out of range.
  """
  ids = sorted(summary.client_id for summary in summaries)
  if ids != list(range(num_clients)):
    raise ValueError(
      f"the SuperNodes report client ids {ids}, expected each of "
      f"0..{num_clients - 1} once; give every SuperNode its own "
      "--node-config 'partition-id=K'."
    )
  ordered = sorted(summaries, key=lambda summary: summary.client_id)
  mean, std = aggregate_feature_statistics(
    [summary.statistics for summary in ordered]
  )
  return Federation(
    num_train=np.asarray([s.statistics.count for s in ordered], np.int64),
    num_test=np.asarray([s.num_test for s in ordered], np.int64),
    label_histograms=np.stack([s.label_histogram for s in ordered]),
    mean=mean,
    std=std,
  )


def federation_to_record(federation: Federation) -> ArrayRecord:
  """Packs a `Federation` for the training messages."""
  return _arrays_record(federation._asdict())


def federation_from_record(record: ArrayRecord) -> Federation:
  """Unpacks a `Federation` written by `federation_to_record`."""
  return Federation(**{key: record[key].numpy() for key in Federation._fields})


def _arrays_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
  return ArrayRecord(
    array_dict={
      key: Array.from_numpy_ndarray(np.asarray(value))
      for key, value in arrays.items()
    }
  )


def skeleton_data(
  info: sites.DatasetInfo, federation: Federation
) -> FederatedData:
  """Returns a `FederatedData` with the federation's shapes and labels.

  Features are zero. Site k's training labels are its histogram laid out
  class by class, so per-site sizes and global class counts are the real
  ones.
  """
  train, test = [], []
  for k in range(len(info.client_names)):
    labels = np.repeat(
      np.arange(info.num_classes, dtype=np.int32),
      federation.label_histograms[k],
    )
    train.append((np.zeros((labels.size, *info.feature_shape)), labels))
    n_test = int(federation.num_test[k])
    test.append(
      (np.zeros((n_test, *info.feature_shape)), np.zeros(n_test, np.int32))
    )
  return FederatedData.from_clients(
    train,
    test,
    client_names=info.client_names,
    feature_names=info.feature_names,
    num_classes=info.num_classes,
    name=info.name,
  )


class World(NamedTuple):
  """The algorithm and its initial state, as both ends build them.

  Attributes:
    info: The dataset's metadata.
    algorithm: Built by `build_algorithm`, as in the simulation.
    pieces: The algorithm's round pieces.
    state: The initial state, from the run's seed.
    run_key: The key whose `fold_in(run_key, r)` drives round `r`.
  """

  info: sites.DatasetInfo
  algorithm: FederatedAlgorithm
  pieces: RoundPieces
  state: PyTree
  run_key: jax.Array


def build_world(
  config: ml_collections.ConfigDict,
  federation: Federation,
  *,
  pooled: bool = False,
) -> World:
  """Builds the model, algorithm and initial state as the simulation does.

  The keys follow `experiment.train_and_evaluate`: `init_key, run_key =
  split(PRNGKey(config.seed))`, with the model initialized from
  `init_key` on one example of zeros (flax and haiku initializers read the
  example's shape and dtype only).

  Raises:
    ValueError: If the config cannot be deployed or its algorithm has no
      round pieces.
  """
  check_deployable(config)
  if config.get("float64", False):
    jax.config.update("jax_enable_x64", True)
  info = sites.dataset_info(config.data, pooled=pooled)
  data = skeleton_data(info, federation)
  # As experiment.build_model, which would import the whole training loop
  # (orbax, matplotlib) into every short-lived ClientApp process.
  options = config.model.to_dict()
  model = get_model(
    options.pop("name"),
    num_classes=data.num_classes,
    feature_shape=data.feature_shape,
    **options,
  )
  algorithm = build_algorithm(config, model, data)
  pieces = require_pieces(algorithm, config.algorithm.name)
  init_key, run_key = jax.random.split(jax.random.PRNGKey(config.seed))
  dtype = jnp.float64 if config.get("float64", False) else jnp.float32
  variables = model.init(init_key, jnp.zeros((1, *info.feature_shape), dtype))
  if config.get("float64", False):
    variables = jax.tree.map(
      lambda leaf: (
        leaf.astype(jnp.float64)
        if jnp.issubdtype(leaf.dtype, jnp.floating)
        else leaf
      ),
      variables,
    )
  state = algorithm.init(init_key, variables)
  return World(info, algorithm, pieces, state, run_key)


def site_batch(
  config: ml_collections.ConfigDict,
  data: sites.SiteData,
  federation: Federation,
) -> ClientBatch:
  """Returns a site's training rows as the simulation stores them.

  Standardized with the federation's mean and standard deviation when
  `config.data.standardize` (unless the loader already did), and padded
  to `federation.capacity` rows.
  """
  x, y = data.train
  if config.data.get("standardize", False) and not data.standardized:
    x = apply_standardization(x, federation.mean, federation.std)
  arrays = stack_clients([(x, y)], max_examples=federation.capacity)
  features = arrays.x[0]
  if config.get("float64", False):
    features = features.astype(np.float64)
  return ClientBatch(
    x=features, y=arrays.y[0], num_examples=arrays.num_examples[0]
  )
