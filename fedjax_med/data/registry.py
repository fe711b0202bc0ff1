"""Loads any of the project's federated datasets by name.

`load_dataset(name, **options)` is the entry point for configs and scripts:

- "fed_heart_disease": four real hospitals. Options are those of
  `load_fed_heart_disease` (split_seed, test_fraction, standardize, target,
  csv_path).
- "fed_heart_disease_text": the same hospitals, patients and splits, each
  record rendered as a clinical sentence and tokenized for the MiniLM
  encoder. Options: split_seed, test_fraction, max_length, target,
  csv_path (`load_fed_heart_disease_text`).
- "breast_cancer" and "digits": pooled scikit-learn data split into
  simulated clients. Options: partition ("iid", "dirichlet" or "quantity"),
  num_clients, alpha, min_partition_size, test_fraction and seed. The "iid"
  partition ignores alpha and min_partition_size. breast_cancer also takes
  standardize, and digits takes as_images.
- "digits_long_tail": digits made long-tailed per class, then split with
  Dirichlet label skew (`fedjax_med.data.long_tail`). Options: profile
  ("exponential" or "zipf"), imbalance_ratio, num_clients, alpha,
  min_partition_size, test_fraction, seed, as_images.
- "digits_multidomain": digits split into label-stratified sites, one per
  acquisition domain ("clean", "contrast", "blur", "noise", "inverted",
  "low_resolution"; `fedjax_med.data.multidomain`). Options: domains,
  examples_per_site, test_fraction, seed, as_images.
- "tfds": a dataset written by `write_tfds`. Options: data_dir, tfds_name.
"""

from __future__ import annotations

import inspect
import pathlib

from fedjax_med.data import long_tail
from fedjax_med.data import partition as partition_lib
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.data.heart_disease import load_fed_heart_disease
from fedjax_med.data.heart_disease_text import load_fed_heart_disease_text
from fedjax_med.data.multidomain import load_digits_multidomain
from fedjax_med.data.sklearn_sources import (
  ArraySource,
  load_breast_cancer_arrays,
  load_digits_arrays,
)
from fedjax_med.data.standardize import standardize_clients
from fedjax_med.data.tfds_io import read_tfds

PARTITIONS = ("iid", "dirichlet", "quantity")


def _federate_source(
  source: ArraySource,
  name: str,
  *,
  partition: str,
  num_clients: int,
  alpha: float,
  min_partition_size: int,
  test_fraction: float,
  seed: int,
) -> FederatedData:
  num_examples = source.y.shape[0]
  if partition == "iid":
    partitions = partition_lib.iid_partition(num_examples, num_clients, seed)
  elif partition == "dirichlet":
    partitions = partition_lib.dirichlet_partition(
      source.y, num_clients, alpha, seed, min_partition_size=min_partition_size
    )
  elif partition == "quantity":
    partitions = partition_lib.quantity_skew_partition(
      num_examples,
      num_clients,
      alpha,
      seed,
      min_partition_size=min_partition_size,
    )
  else:
    raise ValueError(
      f"partition={partition!r} is not one of {list(PARTITIONS)}; use 'iid' "
      "for uniform clients, 'dirichlet' for label skew or 'quantity' for "
      "size skew."
    )
  return partition_lib.federate(
    source.x,
    source.y,
    partitions,
    num_classes=source.num_classes,
    test_fraction=test_fraction,
    seed=seed,
    feature_names=source.feature_names,
    name=name,
  )


def _load_breast_cancer(
  *,
  partition: str = "dirichlet",
  num_clients: int = 10,
  alpha: float = 0.5,
  min_partition_size: int = 10,
  test_fraction: float = 0.2,
  seed: int = 0,
  standardize: bool = True,
) -> FederatedData:
  data = _federate_source(
    load_breast_cancer_arrays(),
    "breast_cancer",
    partition=partition,
    num_clients=num_clients,
    alpha=alpha,
    min_partition_size=min_partition_size,
    test_fraction=test_fraction,
    seed=seed,
  )
  # The raw features span four orders of magnitude. Statistics come from the
  # clients' train splits only.
  return standardize_clients(data) if standardize else data


def _load_digits(
  *,
  partition: str = "dirichlet",
  num_clients: int = 10,
  alpha: float = 0.5,
  min_partition_size: int = 10,
  test_fraction: float = 0.2,
  seed: int = 0,
  as_images: bool = True,
) -> FederatedData:
  return _federate_source(
    load_digits_arrays(as_images),
    "digits",
    partition=partition,
    num_clients=num_clients,
    alpha=alpha,
    min_partition_size=min_partition_size,
    test_fraction=test_fraction,
    seed=seed,
  )


def _load_digits_long_tail(
  *,
  profile: str = "exponential",
  imbalance_ratio: float = 10.0,
  num_clients: int = 10,
  alpha: float = 0.5,
  min_partition_size: int = 10,
  test_fraction: float = 0.2,
  seed: int = 0,
  as_images: bool = True,
) -> FederatedData:
  source = load_digits_arrays(as_images)
  partitions = long_tail.long_tail_partition(
    source.y,
    num_clients=num_clients,
    alpha=alpha,
    imbalance_ratio=imbalance_ratio,
    profile=profile,
    seed=seed,
    min_partition_size=min_partition_size,
  )
  return partition_lib.federate(
    source.x,
    source.y,
    partitions,
    num_classes=source.num_classes,
    test_fraction=test_fraction,
    seed=seed,
    feature_names=source.feature_names,
    name="digits_long_tail",
  )


def _load_tfds(
  *, data_dir: str | pathlib.Path, tfds_name: str | None = None
) -> FederatedData:
  return read_tfds(data_dir, name=tfds_name)


_LOADERS = {
  "fed_heart_disease": load_fed_heart_disease,
  "fed_heart_disease_text": load_fed_heart_disease_text,
  "breast_cancer": _load_breast_cancer,
  "digits": _load_digits,
  "tfds": _load_tfds,
  "digits_long_tail": _load_digits_long_tail,
  "digits_multidomain": load_digits_multidomain,
}
DATASET_NAMES = tuple(_LOADERS)


def load_dataset(name: str, **options) -> FederatedData:
  """Loads the federated dataset `name` with the given options.

  Args:
    name: One of `DATASET_NAMES`.
    **options: Keyword options of that dataset (see the module docstring).
      Omitted options take their defaults: for breast_cancer and digits,
      partition="dirichlet", num_clients=10, alpha=0.5,
      min_partition_size=10, test_fraction=0.2, seed=0, standardize=True
      (breast_cancer) and as_images=True (digits, `[8, 8, 1]` images).
      digits_long_tail defaults to profile="exponential",
      imbalance_ratio=10, num_clients=10, alpha=0.5,
      min_partition_size=10, test_fraction=0.2, seed=0, as_images=True.
      digits_multidomain defaults to all six domains, examples_per_site=0
      (all), test_fraction=0.2, seed=0, as_images=True.

  Returns:
    The `FederatedData`.

  Raises:
    ValueError: If `name` or an option name is unknown, a required option
      is missing, or the loader rejects an option's value.
  """
  if name not in _LOADERS:
    raise ValueError(
      f"unknown dataset {name!r}; known datasets are {list(DATASET_NAMES)}."
    )
  loader = _LOADERS[name]
  parameters = inspect.signature(loader).parameters
  unknown = sorted(set(options) - set(parameters))
  if unknown:
    raise ValueError(
      f"unknown options {unknown} for dataset {name!r}; it accepts "
      f"{list(parameters)}."
    )
  missing = [
    option
    for option, parameter in parameters.items()
    if parameter.default is inspect.Parameter.empty and option not in options
  ]
  if missing:
    raise ValueError(
      f"dataset {name!r} needs the options {missing}, for example "
      f"load_dataset({name!r}, {missing[0]}=...)."
    )
  return loader(**options)
