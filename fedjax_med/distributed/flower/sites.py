"""Datasets a site can load on its own, without the other sites' rows.

In simulation a loader returns every client's rows at once. In a deployment
each site calls `load_site_data` for its own client id and nothing else;
`dataset_info` returns the metadata every party has without reading
any rows (client names, features, classes).

Only Fed-Heart-Disease has a per-site loader so far. Another dataset needs
a branch in `dataset_info` and `load_site_data` that reads one site's local
files. Under Flower's simulation engine every client runs in one machine
anyway, and `pooled=True` loads any dataset of `fedjax_med.data.registry`
whole and takes one client's rows, as the simulation holds them.
"""

from __future__ import annotations

import functools
import json
from typing import NamedTuple

import ml_collections
import numpy as np

from fedjax_med.data import heart_disease
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.data.registry import load_dataset


class DatasetInfo(NamedTuple):
  """Metadata of a dataset that every party has before reading any rows.

  Attributes:
    name: The dataset's name, as `config.data.name`.
    client_names: One name per site, in client-id order.
    feature_names: Names of the feature columns.
    feature_shape: Shape of one example's features.
    num_classes: Label classes.
  """

  name: str
  client_names: tuple[str, ...]
  feature_names: tuple[str, ...]
  feature_shape: tuple[int, ...]
  num_classes: int


class SiteData(NamedTuple):
  """One site's own rows, features not yet standardized.

  Attributes:
    train: `(x, y)` with features `[n, *feature_shape]` (float64) and
      int32 labels `[n]`.
    test: `(x, y)` of the held-out rows.
    standardized: Whether the loader already standardized the features
      (the pooled loaders do it with every client's statistics).
  """

  train: tuple[np.ndarray, np.ndarray]
  test: tuple[np.ndarray, np.ndarray]
  standardized: bool = False


SITE_DATASETS = ("fed_heart_disease",)


def _check_dataset(name: str) -> None:
  if name not in SITE_DATASETS:
    raise ValueError(
      f"data.name={name!r} has no per-site loader, so it cannot run in a "
      f"deployment yet; use one of {SITE_DATASETS}, or add a loader that "
      "reads one site's local files to fedjax_med.distributed.flower.sites."
    )


@functools.lru_cache(maxsize=1)
def _load_pooled(data_json: str) -> FederatedData:
  options = ml_collections.ConfigDict(json.loads(data_json)).to_dict()
  return load_dataset(options.pop("name"), **options)


def _pooled(data_config: ml_collections.ConfigDict) -> FederatedData:
  return _load_pooled(data_config.to_json())


def dataset_info(
  data_config: ml_collections.ConfigDict, *, pooled: bool = False
) -> DatasetInfo:
  """Returns the metadata of `config.data`'s dataset.

  Args:
    data_config: The experiment's `config.data`.
    pooled: Read the metadata from the whole dataset (simulation only).

  Raises:
    ValueError: If the dataset has no per-site loader and `pooled` is
      False.
  """
  if pooled:
    data = _pooled(data_config)
    return DatasetInfo(
      name=data.name,
      client_names=tuple(data.client_names),
      feature_names=tuple(data.feature_names),
      feature_shape=tuple(data.feature_shape),
      num_classes=data.num_classes,
    )
  _check_dataset(data_config.name)
  target = data_config.get("target", "binary")
  return DatasetInfo(
    name=data_config.name,
    client_names=heart_disease.CLIENT_NAMES,
    feature_names=heart_disease.FEATURE_NAMES,
    feature_shape=(len(heart_disease.FEATURE_NAMES),),
    num_classes=heart_disease.TARGETS[target],
  )


def load_site_data(
  data_config: ml_collections.ConfigDict,
  client_id: int,
  csv_path: str | None = None,
  *,
  pooled: bool = False,
) -> SiteData:
  """Loads only site `client_id`'s rows of `config.data`'s dataset.

  Args:
    data_config: The experiment's `config.data`.
    client_id: The site's index in `DatasetInfo.client_names`.
    csv_path: A local copy of the site's data file, if the default one
      does not apply (Fed-Heart-Disease: `heart_disease_uci.csv`).
    pooled: Load the whole dataset and take this client's rows, already
      standardized by the loader (simulation only: it reads every
      client's rows).

  Raises:
    ValueError: If the dataset has no per-site loader or `client_id` is
      out of range.
  """
  info = dataset_info(data_config, pooled=pooled)
  if not 0 <= client_id < len(info.client_names):
    raise ValueError(
      f"partition-id={client_id} is out of range for {info.name}, whose "
      f"sites are 0..{len(info.client_names) - 1} {info.client_names}; "
      "start the SuperNode with --node-config 'partition-id=K'."
    )
  if pooled:
    data = _pooled(data_config)
    return SiteData(
      train=data.train.client(client_id),
      test=data.test.client(client_id),
      standardized=True,
    )
  splits = heart_disease.load_site(
    info.client_names[client_id],
    split_seed=data_config.get("split_seed", 42),
    test_fraction=data_config.get("test_fraction", 0.34),
    target=data_config.get("target", "binary"),
    csv_path=csv_path,
  )
  return SiteData(train=splits.train, test=splits.test)
