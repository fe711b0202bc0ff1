"""Train/test splits inside one client, and a guard against patient leakage.

A test example whose patient also contributed training rows, at the same or
another site, inflates test metrics. `train_test_indices` can split by
patient, and `check_patient_ids` raises if any patient ends up in two clients
or on both sides of a split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import train_test_split


def _can_stratify(labels: np.ndarray, num_test: int) -> bool:
  # sklearn needs two examples per class and room for one example of every
  # class on each side of the split.
  _, counts = np.unique(labels, return_counts=True)
  num_train = labels.size - num_test
  return (
    counts.size > 1
    and counts.min() >= 2
    and num_test >= counts.size
    and num_train >= counts.size
  )


def _split_rows(
  labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  n = labels.size
  num_test = math.ceil(test_fraction * n)
  if num_test == 0 or num_test >= n:
    return np.arange(n), np.arange(0)
  stratify = labels if _can_stratify(labels, num_test) else None
  train_idx, test_idx = train_test_split(
    np.arange(n),
    test_size=test_fraction,
    random_state=seed,
    shuffle=True,
    stratify=stratify,
  )
  return np.sort(train_idx), np.sort(test_idx)


def train_test_indices(
  labels: np.ndarray,
  test_fraction: float,
  seed: int,
  groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Splits one client's examples into sorted train and test indices.

  The split is sklearn's `train_test_split` with `test_size=test_fraction`,
  so the test side gets `ceil(test_fraction * n)` examples. It is stratified
  on the label when every class has at least two examples and both sides
  can contain one of each class, and plain otherwise. A client whose test side
  would take every example (for instance a single example) keeps all of
  them for training and gets an empty test split.

  Args:
    labels: The client's labels, shape `[n]`.
    test_fraction: Share held out for testing, in [0, 1).
    seed: `random_state` of the split.
    groups: Patient id of every example, shape `[n]`. When given, patients
      are split instead of examples, each stratified by the label of its
      first example, and all of a patient's examples follow it.

  Returns:
    `(train_indices, test_indices)` into `labels`, both sorted int64.

  Raises:
    ValueError: If `test_fraction` is outside [0, 1) or `groups` does not
      match `labels`.
  """
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError(
      f"test_fraction={test_fraction} must be in [0, 1); 0 keeps every "
      "example for training."
    )
  labels = np.asarray(labels)
  if groups is None:
    return _split_rows(labels, test_fraction, seed)

  groups = np.asarray(groups)
  if groups.shape != labels.shape:
    raise ValueError(
      f"groups has shape {groups.shape} but labels have {labels.shape}."
    )
  unique, first, inverse = np.unique(
    groups, return_index=True, return_inverse=True
  )
  # Walk the patients in order of first appearance, as rows would be.
  order = np.argsort(first)
  rank = np.empty_like(order)
  rank[order] = np.arange(order.size)
  train_groups, _ = _split_rows(labels[first[order]], test_fraction, seed)
  in_train = np.isin(rank[inverse.reshape(-1)], train_groups)
  return np.flatnonzero(in_train), np.flatnonzero(~in_train)


def check_patient_ids(
  train_ids: Sequence[np.ndarray],
  test_ids: Sequence[np.ndarray],
  client_names: Sequence[str],
) -> None:
  """Raises if a patient is in two clients or in both train and test.

  Args:
    train_ids: Patient ids of every client's train examples.
    test_ids: Patient ids of every client's test examples.
    client_names: One name per client, used in the error.

  Raises:
    ValueError: Naming the first patient found in two clients, or in the
      train and the test split of one client.
  """
  owner = {}
  for k, (train, test) in enumerate(zip(train_ids, test_ids, strict=True)):
    both = np.intersect1d(train, test)
    if both.size:
      raise ValueError(
        f"patient id {both.tolist()[0]!r} is in both the train and the test "
        f"split of client {client_names[k]!r}, so test metrics would leak; "
        "split by patient (pass the patient ids as groups)."
      )
    for patient in np.unique(np.concatenate([train, test])).tolist():
      other = owner.setdefault(patient, k)
      if other != k:
        raise ValueError(
          f"patient id {patient!r} appears in clients "
          f"{client_names[other]!r} and {client_names[k]!r}; a patient's "
          "records must belong to one client. Remove the duplicate records "
          "or fix the patient ids."
        )
