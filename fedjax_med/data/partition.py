"""Partitioners that split one pooled dataset into simulated clients.

Every partitioner returns a list with one sorted int64 index array per client.
The arrays are pairwise disjoint, their union is every index, no client is
empty, and the same seed gives bit-identical output. Requests that cannot be
met (more clients than examples, `alpha <= 0`, ...) raise `ValueError`.

- `iid_partition`: a uniform random split into near-equal sizes.
- `dirichlet_partition`: label skew. For each class, the class's examples are
  split among the clients in proportions drawn from Dirichlet(alpha), as in
  Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data Distribution
  for Federated Visual Classification" (arXiv:1909.06335). Small `alpha`
  gives each client few classes and can leave clients tiny or empty, so the
  draw is repeated until every client has `min_partition_size` examples, at
  most `max_retries` times.
- `quantity_skew_partition`: client sizes from Dirichlet(alpha), labels IID.
- `natural_partition`: one client per real site.

`federate` turns a partition into a `FederatedData` with a train/test split
inside every client.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from absl import logging

from fedjax_med.data.federated_data import FederatedData
from fedjax_med.data.splits import check_patient_ids, train_test_indices


def _check_num_clients(
  num_examples: int, num_clients: int, min_partition_size: int
) -> None:
  if num_clients < 1:
    raise ValueError(f"num_clients={num_clients} must be at least 1.")
  if min_partition_size < 1:
    raise ValueError(
      f"min_partition_size={min_partition_size} must be at least 1, so that "
      "no client is empty."
    )
  if num_clients * min_partition_size > num_examples:
    raise ValueError(
      f"num_clients={num_clients} with min_partition_size="
      f"{min_partition_size} needs {num_clients * min_partition_size} "
      f"examples, but there are only {num_examples}; lower num_clients or "
      "min_partition_size."
    )


def _check_alpha(alpha: float) -> None:
  if not np.isfinite(alpha) or alpha <= 0:
    raise ValueError(
      f"alpha={alpha} must be a finite number > 0; small values such as 0.1 "
      "give strong skew and large values such as 100 give near-IID clients."
    )


def _check_labels(labels: np.ndarray) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D, got shape {labels.shape}.")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
      f"labels must be integers, got dtype {labels.dtype}; encode the "
      "classes as 0..num_classes-1."
    )
  if labels.size and labels.min() < 0:
    raise ValueError(f"labels must be >= 0, got minimum {labels.min()}.")
  return labels


def _split_by_sizes(
  permutation: np.ndarray, sizes: Sequence[int]
) -> list[np.ndarray]:
  bounds = np.cumsum(sizes)[:-1]
  return [np.sort(part) for part in np.split(permutation, bounds)]


def partition_summary(
  partitions: Sequence[np.ndarray],
  labels: np.ndarray | None = None,
  num_classes: int | None = None,
  client_names: Sequence[str] | None = None,
) -> str:
  """Formats a table of examples and label histogram per client.

  Args:
    partitions: One index array per client.
    labels: Labels of the pooled examples, shape `[num_examples]`. Without
      them the table lists only sizes.
    num_classes: Length of each histogram. Defaults to `max(labels) + 1`.
    client_names: One name per client. Defaults to `client_0`, ...

  Returns:
    One header line and one line per client.
  """
  if client_names is None:
    client_names = [f"client_{k}" for k in range(len(partitions))]
  width = max([len("client"), *(len(str(n)) for n in client_names)])
  if labels is None:
    lines = [f"{'client':<{width}}  examples"]
  else:
    labels = np.asarray(labels)
    if num_classes is None:
      num_classes = int(labels.max()) + 1 if labels.size else 0
    lines = [
      f"{'client':<{width}}  examples  label counts 0..{num_classes - 1}"
    ]
  for name, part in zip(client_names, partitions, strict=True):
    line = f"{str(name):<{width}}  {len(part):>8}"
    if labels is not None:
      counts = np.bincount(labels[part], minlength=num_classes)
      line += "  " + " ".join(str(int(c)) for c in counts)
    lines.append(line)
  return "\n".join(lines)


def iid_partition(
  num_examples: int, num_clients: int, seed: int
) -> list[np.ndarray]:
  """Splits `range(num_examples)` uniformly at random into clients.

  Client sizes differ by at most one.

  Raises:
    ValueError: If `num_clients` is below 1 or above `num_examples`.
  """
  _check_num_clients(num_examples, num_clients, 1)
  rng = np.random.default_rng(seed)
  permutation = rng.permutation(num_examples)
  partitions = [np.sort(p) for p in np.array_split(permutation, num_clients)]
  logging.info("iid_partition:\n%s", partition_summary(partitions))
  return partitions


def dirichlet_partition(
  labels: np.ndarray,
  num_clients: int,
  alpha: float,
  seed: int,
  min_partition_size: int = 1,
  max_retries: int = 100,
) -> list[np.ndarray]:
  """Splits examples into label-skewed clients with per-class Dirichlet draws.

  For every class, proportions over the clients are drawn from
  Dirichlet(alpha * ones(num_clients)) and the class's shuffled examples are
  cut at those proportions. If a client ends up with fewer than
  `min_partition_size` examples, the whole draw is repeated with the same
  generator, so the output depends only on the arguments.

  Args:
    labels: Integer labels, shape `[num_examples]`.
    num_clients: Number of clients.
    alpha: Dirichlet concentration, > 0. Smaller means more skew.
    seed: Seed of the random generator.
    min_partition_size: Minimum number of examples per client, at least 1.
    max_retries: Most draws tried before giving up.

  Returns:
    One sorted index array per client.

  Raises:
    ValueError: If the arguments are invalid, or no draw within `max_retries`
      gives every client `min_partition_size` examples.
  """
  labels = _check_labels(labels)
  _check_alpha(alpha)
  _check_num_clients(labels.size, num_clients, min_partition_size)
  if max_retries < 1:
    raise ValueError(f"max_retries={max_retries} must be at least 1.")

  rng = np.random.default_rng(seed)
  class_indices = [np.flatnonzero(labels == c) for c in np.unique(labels)]
  smallest = 0
  for _ in range(max_retries):
    parts = [[] for _ in range(num_clients)]
    for indices in class_indices:
      proportions = rng.dirichlet(np.full(num_clients, alpha))
      cuts = (np.cumsum(proportions)[:-1] * len(indices)).astype(int)
      shuffled = rng.permutation(indices)
      for k, chunk in enumerate(np.split(shuffled, cuts)):
        parts[k].append(chunk)
    partitions = [np.sort(np.concatenate(p)) for p in parts]
    smallest = min(len(p) for p in partitions)
    if smallest >= min_partition_size:
      logging.info(
        "dirichlet_partition(alpha=%s):\n%s",
        alpha,
        partition_summary(partitions, labels),
      )
      return partitions

  raise ValueError(
    f"dirichlet_partition found no split with at least min_partition_size="
    f"{min_partition_size} examples per client in {max_retries} draws "
    f"(alpha={alpha}, {num_clients} clients, {labels.size} examples; the "
    f"last draw's smallest client had {smallest}). Raise alpha, lower "
    "min_partition_size or num_clients, or raise max_retries."
  )


def quantity_skew_partition(
  num_examples: int,
  num_clients: int,
  alpha: float,
  seed: int,
  min_partition_size: int = 1,
) -> list[np.ndarray]:
  """Splits examples into clients whose sizes follow a Dirichlet draw.

  Every client first gets `min_partition_size` examples. The remaining
  examples are dealt out by one multinomial draw with probabilities from
  Dirichlet(alpha * ones(num_clients)), so no retries are needed. Which
  examples a client gets is uniform at random.

  Raises:
    ValueError: If `alpha <= 0` or the clients cannot all get
      `min_partition_size` examples.
  """
  _check_alpha(alpha)
  _check_num_clients(num_examples, num_clients, min_partition_size)
  rng = np.random.default_rng(seed)
  proportions = rng.dirichlet(np.full(num_clients, alpha))
  remaining = num_examples - num_clients * min_partition_size
  sizes = min_partition_size + rng.multinomial(remaining, proportions)
  partitions = _split_by_sizes(rng.permutation(num_examples), sizes)
  logging.info(
    "quantity_skew_partition(alpha=%s):\n%s",
    alpha,
    partition_summary(partitions),
  )
  return partitions


def natural_partition(
  site_ids: Sequence[object] | np.ndarray,
) -> tuple[list[np.ndarray], tuple[str, ...]]:
  """Makes one client per distinct site, in order of first appearance.

  Args:
    site_ids: The site of every example, shape `[num_examples]`.

  Returns:
    `(partitions, client_names)`, with `str(site)` as each client's name.

  Raises:
    ValueError: If `site_ids` is empty or not 1-D.
  """
  site_ids = np.asarray(site_ids)
  if site_ids.ndim != 1 or site_ids.size == 0:
    raise ValueError(
      f"site_ids must be a non-empty 1-D array, got shape {site_ids.shape}."
    )
  sites, first, inverse = np.unique(
    site_ids, return_index=True, return_inverse=True
  )
  order = np.argsort(first)
  partitions = [np.flatnonzero(inverse == s) for s in order]
  client_names = tuple(str(sites[s]) for s in order)
  logging.info(
    "natural_partition:\n%s",
    partition_summary(partitions, client_names=client_names),
  )
  return partitions, client_names


def _check_partitions(
  partitions: Sequence[np.ndarray], num_examples: int
) -> None:
  seen = np.full(num_examples, -1)
  for k, part in enumerate(partitions):
    part = np.asarray(part, np.int64)
    if part.size and (part.min() < 0 or part.max() >= num_examples):
      raise ValueError(f"client {k} has indices outside [0, {num_examples}).")
    clash = part[seen[part] >= 0]
    if clash.size:
      raise ValueError(
        f"example {int(clash[0])} is in client {int(seen[clash[0]])} and "
        f"in client {k}; partitions must be disjoint."
      )
    seen[part] = k


def federate(
  x: np.ndarray,
  y: np.ndarray,
  partitions: Sequence[np.ndarray],
  *,
  num_classes: int,
  test_fraction: float,
  seed: int,
  client_names: Sequence[str] | None = None,
  feature_names: Sequence[str] = (),
  name: str = "",
  patient_ids: np.ndarray | None = None,
) -> FederatedData:
  """Splits every client into train and test and stacks the clients.

  Each client's split is stratified on the label where possible (see
  `train_test_indices`). With `patient_ids`, all records of one patient
  stay on the same side, and a patient found in two clients raises.

  Args:
    x: Pooled features, shape `[num_examples, *feature_shape]`.
    y: Pooled integer labels, shape `[num_examples]`.
    partitions: One index array per client, pairwise disjoint.
    num_classes: Number of label classes.
    test_fraction: Share of each client's examples held out, in [0, 1).
    seed: Seed of every client's split.
    client_names: One name per client. Defaults to `client_0`, ...
    feature_names: Names of the feature columns.
    name: Dataset name.
    patient_ids: Patient of every pooled example, shape `[num_examples]`.

  Returns:
    The `FederatedData`, clients in the order of `partitions`.

  Raises:
    ValueError: If partitions overlap or go out of range, shapes disagree,
      or a patient appears in two clients.
  """
  x = np.asarray(x)
  y = np.asarray(y)
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}.")
  if patient_ids is not None:
    patient_ids = np.asarray(patient_ids)
    if patient_ids.shape != y.shape:
      raise ValueError(
        f"patient_ids has shape {patient_ids.shape}, labels {y.shape}."
      )
  _check_partitions(partitions, y.shape[0])
  if client_names is None:
    client_names = [f"client_{k}" for k in range(len(partitions))]

  train, test = [], []
  train_ids, test_ids = [], []
  for part in partitions:
    part = np.asarray(part, np.int64)
    groups = None if patient_ids is None else patient_ids[part]
    train_idx, test_idx = train_test_indices(
      y[part], test_fraction, seed, groups=groups
    )
    train.append((x[part[train_idx]], y[part[train_idx]]))
    test.append((x[part[test_idx]], y[part[test_idx]]))
    if patient_ids is not None:
      train_ids.append(groups[train_idx])
      test_ids.append(groups[test_idx])
  if patient_ids is not None:
    check_patient_ids(train_ids, test_ids, client_names)

  return FederatedData.from_clients(
    train,
    test,
    client_names=client_names,
    feature_names=feature_names,
    num_classes=num_classes,
    name=name,
  )
