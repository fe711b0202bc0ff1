"""Class counts of a federated training set and the split into head and tail.

Long-tail losses and metrics need the number of training examples of every
class. In a federation no party has the pooled labels, so the counts used
here are the sum of the clients' label histograms: each client reports one
vector of `num_classes` counts, a federated statistic that reveals the label
distribution of each site (but no record).

The tail is the set of rare classes that long-tail metrics report on and that
FEDTAIL matches against the head. `tail_classes` takes the rarest classes
that together hold at most `fraction` of the training examples, and always
at least the single rarest class but never every class.
"""

from __future__ import annotations

import numpy as np

from fedjax_med.data.federated_data import ClientArrays


def client_label_histograms(
  split: ClientArrays, num_classes: int
) -> np.ndarray:
  """Counts every client's real rows per class.

  Args:
    split: A train or test split with a leading client axis.
    num_classes: Number of label classes.

  Returns:
    Int64 counts of shape `[num_clients, num_classes]`.
  """
  labels = np.asarray(split.y)
  mask = np.asarray(split.mask).astype(bool)
  histograms = np.zeros((labels.shape[0], num_classes), np.int64)
  for k in range(labels.shape[0]):
    histograms[k] = np.bincount(labels[k][mask[k]], minlength=num_classes)[
      :num_classes
    ]
  return histograms


def global_class_counts(split: ClientArrays, num_classes: int) -> np.ndarray:
  """Sums the clients' label histograms into `[num_classes]` counts."""
  return client_label_histograms(split, num_classes).sum(axis=0)


def tail_classes(class_counts, fraction: float = 0.2) -> np.ndarray:
  """Selects the rarest classes that together hold at most `fraction`.

  Classes are sorted by count, rarest first (ties broken by the lower class
  index), and added while their summed count stays within `fraction` of the
  total. The rarest class is always in the tail and the most frequent one
  never is, so head and tail are both non-empty for two or more classes.

  Args:
    class_counts: `[num_classes]` training examples per class.
    fraction: Share of the training examples that the tail may hold, in
      (0, 1).

  Returns:
    Sorted int64 indices of the tail classes.

  Raises:
    ValueError: For fewer than two classes, negative counts, or a fraction
      outside (0, 1).
  """
  counts = np.asarray(class_counts, np.int64)
  if counts.ndim != 1 or counts.size < 2:
    raise ValueError(
      f"class_counts has shape {counts.shape}; pass one count per class "
      "for at least two classes."
    )
  if np.any(counts < 0):
    raise ValueError(f"class_counts {counts.tolist()} contain a negative.")
  if not 0.0 < fraction < 1.0:
    raise ValueError(
      f"tail fraction={fraction} must lie in (0, 1); 0.2 puts the classes "
      "holding the rarest 20% of the training examples in the tail."
    )
  order = np.argsort(counts, kind="stable")
  cumulative = np.cumsum(counts[order])
  within = cumulative <= fraction * counts.sum()
  size = int(np.clip(np.sum(within), 1, counts.size - 1))
  return np.sort(order[:size])


def tail_mask(class_counts, fraction: float = 0.2) -> np.ndarray:
  """Returns a `[num_classes]` bool mask of `tail_classes`."""
  counts = np.asarray(class_counts)
  mask = np.zeros(counts.shape, bool)
  mask[tail_classes(counts, fraction)] = True
  return mask
