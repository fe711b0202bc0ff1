"""Long-tailed federated splits: rare classes that are also scattered.

A pooled, roughly balanced dataset is made long-tailed by keeping `n_c`
examples of class `c` (drawn uniformly without replacement), and the kept
examples are then split over clients with Dirichlet label skew
(`partition.dirichlet_partition`). Tail classes end up both rare overall and
concentrated at a few clients.

Class `c`'s rank in the profile is its index: class 0 is the head and class
`C - 1` the rarest. With `n_max` examples in the head and the imbalance
ratio `r = n_0 / n_{C-1}`:

- "exponential" (the CIFAR-LT profile of Cao et al., "Learning Imbalanced
  Datasets with Label-Distribution-Aware Margin Loss", NeurIPS 2019,
  arXiv:1906.07413): `n_c = floor(n_max * r^(-c / (C - 1)))`.
- "zipf": `n_c = floor(n_max * (c + 1)^(-s))` with `s = log(r) / log(C)`, so
  the rarest class again has `n_max / r` examples.

Every class keeps at least one example. `n_max` defaults to the smallest
class's available count, so that every class can supply its target.
"""

from __future__ import annotations

import math

import numpy as np
from absl import logging

from fedjax_med.data import partition as partition_lib

PROFILES = ("exponential", "zipf")

# Added before flooring so that a product such as the Zipf count
# 20 * 2**(-log(10) / log(2)), which is 2 but evaluates just below it in
# float64, floors to the intended integer.
_FLOOR_TOLERANCE = 1e-9


def long_tail_class_sizes(
  num_classes: int, n_max: int, imbalance_ratio: float, profile: str
) -> np.ndarray:
  """Returns the `[num_classes]` int64 target count of every class.

  Raises:
    ValueError: For an unknown profile, fewer than two classes, `n_max < 1`
      or `imbalance_ratio < 1`.
  """
  if profile not in PROFILES:
    raise ValueError(
      f"long-tail profile={profile!r} is unknown; use one of {PROFILES}."
    )
  if num_classes < 2:
    raise ValueError(f"num_classes={num_classes} must be at least 2.")
  if n_max < 1:
    raise ValueError(f"n_max={n_max} must be at least 1.")
  if not (math.isfinite(imbalance_ratio) and imbalance_ratio >= 1):
    raise ValueError(
      f"imbalance_ratio={imbalance_ratio} must be a finite number >= 1 "
      "(head count over tail count); 1 keeps the classes balanced."
    )
  c = np.arange(num_classes, dtype=np.float64)
  if profile == "exponential":
    scale = imbalance_ratio ** (-c / (num_classes - 1))
  else:
    exponent = math.log(imbalance_ratio) / math.log(num_classes)
    scale = (c + 1.0) ** (-exponent)
  sizes = np.floor(n_max * scale + _FLOOR_TOLERANCE).astype(np.int64)
  return np.maximum(sizes, 1)


def long_tail_subsample(
  labels: np.ndarray,
  *,
  imbalance_ratio: float,
  profile: str = "exponential",
  seed: int = 0,
  n_max: int | None = None,
  num_classes: int | None = None,
) -> np.ndarray:
  """Keeps `long_tail_class_sizes` examples of every class.

  Args:
    labels: Pooled integer labels, shape `[num_examples]`.
    imbalance_ratio: Head count over tail count, >= 1.
    profile: "exponential" or "zipf".
    seed: Seed of the draw within each class.
    n_max: Examples kept of class 0; defaults to the smallest class's
      available count.
    num_classes: Defaults to `max(labels) + 1`.

  Returns:
    Sorted int64 indices of the kept examples.

  Raises:
    ValueError: For invalid profile settings, or a class with fewer
      examples than its target.
  """
  labels = np.asarray(labels)
  if num_classes is None:
    num_classes = int(labels.max()) + 1
  available = np.bincount(labels, minlength=num_classes)
  if n_max is None:
    n_max = int(available.min())
  sizes = long_tail_class_sizes(num_classes, n_max, imbalance_ratio, profile)
  short = np.flatnonzero(sizes > available)
  if short.size:
    c = int(short[0])
    raise ValueError(
      f"class {c} has {available[c]} examples but the {profile} profile "
      f"with n_max={n_max} needs {sizes[c]}; lower n_max or leave it unset."
    )
  rng = np.random.default_rng(seed)
  kept = [
    rng.choice(np.flatnonzero(labels == c), size=int(sizes[c]), replace=False)
    for c in range(num_classes)
  ]
  return np.sort(np.concatenate(kept)).astype(np.int64)


def long_tail_partition(
  labels: np.ndarray,
  *,
  num_clients: int,
  alpha: float,
  imbalance_ratio: float,
  profile: str = "exponential",
  seed: int = 0,
  min_partition_size: int = 1,
  n_max: int | None = None,
) -> list[np.ndarray]:
  """Subsamples to a long tail, then splits with Dirichlet label skew.

  Args:
    labels: Pooled integer labels, shape `[num_examples]`.
    num_clients: Number of clients.
    alpha: Dirichlet concentration of the label skew, > 0.
    imbalance_ratio: Head count over tail count, >= 1.
    profile: "exponential" or "zipf".
    seed: Seed of both the subsampling and the partition.
    min_partition_size: Minimum examples per client, at least 1.
    n_max: Examples kept of class 0 (see `long_tail_subsample`).

  Returns:
    One sorted index array into `labels` per client. The arrays are
    disjoint and together hold exactly the kept examples.

  Raises:
    ValueError: If the subsample or the partition cannot be built.
  """
  labels = np.asarray(labels)
  kept = long_tail_subsample(
    labels,
    imbalance_ratio=imbalance_ratio,
    profile=profile,
    seed=seed,
    n_max=n_max,
  )
  parts = partition_lib.dirichlet_partition(
    labels[kept],
    num_clients,
    alpha,
    seed,
    min_partition_size=min_partition_size,
  )
  partitions = [kept[part] for part in parts]
  logging.info(
    "long_tail_partition(%s, ratio=%s, alpha=%s):\n%s",
    profile,
    imbalance_ratio,
    alpha,
    partition_lib.partition_summary(partitions, labels),
  )
  return partitions
