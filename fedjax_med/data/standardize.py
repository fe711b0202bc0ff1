"""Feature standardization from per-client sufficient statistics.

The server receives no feature rows. Each client sends the count, the sum and
the sum of squares of its training features. The server adds them up and
derives one mean and one standard deviation, which every client then applies
to its own train and test rows. The result equals standardizing the pooled
training rows (population variance, as sklearn's `StandardScaler` computes),
without pooling them.

Sums are accumulated in float64. A feature with zero variance gets a standard
deviation of 1, as in `StandardScaler`, so it maps to 0 instead of NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from fedjax_med.data.federated_data import FederatedData, stack_clients


class FeatureStatistics(NamedTuple):
  """Sufficient statistics of one client's features for mean and variance.

  Attributes:
    count: Number of examples summed over.
    sum: Per-feature sum, shape `feature_shape`, float64.
    sum_sq: Per-feature sum of squares, shape `feature_shape`, float64.
  """

  count: int
  sum: np.ndarray
  sum_sq: np.ndarray


def feature_statistics(x: np.ndarray) -> FeatureStatistics:
  """Computes one client's statistics over the example axis.

  Args:
    x: The client's real rows, shape `[num_examples, *feature_shape]`.

  Returns:
    The count, sum and sum of squares of every feature.
  """
  x = np.asarray(x, np.float64)
  return FeatureStatistics(
    count=int(x.shape[0]),
    sum=x.sum(axis=0),
    sum_sq=np.square(x).sum(axis=0),
  )


def aggregate_feature_statistics(
  statistics: Sequence[FeatureStatistics],
) -> tuple[np.ndarray, np.ndarray]:
  """Adds up the clients' statistics into one mean and standard deviation.

  This is the server's side of federated standardization: its only inputs are
  `FeatureStatistics` tuples, never feature rows.

  Args:
    statistics: One `FeatureStatistics` per client.

  Returns:
    `(mean, std)`, each of shape `feature_shape`, float64. A zero standard
    deviation is replaced by 1.

  Raises:
    TypeError: If an element is not a `FeatureStatistics`.
    ValueError: If there are no statistics, the feature shapes differ, or
      the clients have no examples in total.
  """
  if not statistics:
    raise ValueError("aggregate_feature_statistics needs at least one client.")
  for k, stats in enumerate(statistics):
    if not isinstance(stats, FeatureStatistics):
      raise TypeError(
        f"statistics[{k}] is a {type(stats).__name__}, not a "
        "FeatureStatistics; compute it on the client with "
        "feature_statistics(x)."
      )
    if np.shape(stats.sum) != np.shape(statistics[0].sum):
      raise ValueError(
        f"client {k} has feature shape {np.shape(stats.sum)}, but client 0 "
        f"has {np.shape(statistics[0].sum)}."
      )

  count = sum(stats.count for stats in statistics)
  if count == 0:
    raise ValueError(
      "the clients have no examples in total, so no mean or standard "
      "deviation can be computed; check that the train splits are not empty."
    )
  total = np.sum([stats.sum for stats in statistics], axis=0)
  total_sq = np.sum([stats.sum_sq for stats in statistics], axis=0)
  mean = total / count
  # Rounding can push E[x^2] - E[x]^2 slightly below zero for constant columns.
  variance = np.maximum(total_sq / count - np.square(mean), 0.0)
  std = np.sqrt(variance)
  std = np.where(std > 0.0, std, 1.0)
  return mean, std


def apply_standardization(
  x: np.ndarray, mean: np.ndarray, std: np.ndarray
) -> np.ndarray:
  """Returns `(x - mean) / std` as float32, computed in float64."""
  return ((np.asarray(x, np.float64) - mean) / std).astype(np.float32)


def standardize_clients(data: FederatedData) -> FederatedData:
  """Standardizes every client with statistics of the clients' train splits.

  Args:
    data: Any `FederatedData`, with features of shape
      `[num_clients, max_examples, *feature_shape]`.

  Returns:
    A copy whose real train and test rows are standardized with the mean and
    standard deviation of all clients' train rows. Padding rows stay zero and
    the padded sizes are kept.
  """
  statistics = [
    feature_statistics(data.train.client(k)[0]) for k in range(data.num_clients)
  ]
  mean, std = aggregate_feature_statistics(statistics)

  def standardize_split(split):
    clients = []
    for k in range(split.num_clients):
      x, y = split.client(k)
      clients.append((apply_standardization(x, mean, std), y))
    return stack_clients(clients, max_examples=split.max_examples)

  return data.replace(
    train=standardize_split(data.train), test=standardize_split(data.test)
  )
