"""Long-tail metrics per site and pooled: recall per class and on the tail.

Accuracy rewards a model that ignores rare classes, so long-tailed tasks are
read through metrics that give every class the same weight. All are computed
on the host with `sklearn.metrics` from the real rows only:

- "balanced_accuracy": the mean recall over the classes present in the
  labels (`balanced_accuracy_score`).
- "macro_f1": the unweighted mean F1 over the classes present in the labels
  or the predictions (`f1_score(average="macro")`, sklearn's default class
  set). A class without true or predicted rows has F1 0.
- "per_class_recall": one recall per class, NaN where the class has no row.
- "tail_recall" and "head_recall": the mean recall over the tail and the
  head classes that have rows, NaN where none has.
- "per_class_support": real rows per class.

The tail is fixed by the caller, normally from the global training counts
with `fedjax_med.losses.class_statistics.tail_classes`: the rarest classes
that together hold at most a fraction (0.2 by default) of the training
examples. The experiment loop adds these metrics to `final_metrics.json`
under "long_tail" for tasks with more than two classes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn import metrics as sk_metrics


def _mean_recall(recalls: np.ndarray, classes: np.ndarray) -> float:
  values = recalls[classes] if classes.size else np.asarray([])
  values = values[np.isfinite(values)]
  return float(values.mean()) if values.size else math.nan


def long_tail_metrics(
  probs: np.ndarray,
  labels: np.ndarray,
  mask: np.ndarray | None = None,
  tail_classes: Sequence[int] = (),
) -> dict:
  """Computes balanced accuracy, macro F1 and recall per class and tail.

  Args:
    probs: `[n, num_classes]` class probabilities (or any scores whose arg
      max is the prediction).
    labels: `[n]` integer labels in `[0, num_classes)`.
    mask: `[n]` bool, False on padding rows; None treats every row as real.
    tail_classes: Indices of the tail classes.

  Returns:
    The metrics of the module docstring and "num_examples". With no real
    row every metric is NaN.
  """
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels).astype(np.int64)
  if probs.ndim != 2 or labels.shape != probs.shape[:1]:
    raise ValueError(
      f"probs has shape {probs.shape} and labels {labels.shape}; expected "
      "[n, num_classes] and [n]."
    )
  num_classes = probs.shape[1]
  if mask is None:
    mask = np.ones(labels.shape, bool)
  mask = np.asarray(mask).astype(bool)
  labels, predictions = labels[mask], probs[mask].argmax(axis=1)
  tail = np.asarray(sorted(int(c) for c in tail_classes), np.int64)
  if tail.size and (tail.min() < 0 or tail.max() >= num_classes):
    raise ValueError(
      f"tail_classes {tail.tolist()} fall outside [0, {num_classes})."
    )
  head = np.setdiff1d(np.arange(num_classes), tail)
  support = np.bincount(labels, minlength=num_classes)[:num_classes]

  if labels.size == 0:
    nan_list = [math.nan] * num_classes
    return {
      "balanced_accuracy": math.nan,
      "macro_f1": math.nan,
      "tail_recall": math.nan,
      "head_recall": math.nan,
      "per_class_recall": nan_list,
      "per_class_support": support.tolist(),
      "num_examples": 0,
    }

  recalls = sk_metrics.recall_score(
    labels,
    predictions,
    labels=np.arange(num_classes),
    average=None,
    zero_division=np.nan,
  )
  with warnings.catch_warnings():
    # A single class in the labels is normal at one site under label skew.
    warnings.filterwarnings("ignore", message="A single label was found")
    warnings.filterwarnings("ignore", message="y_pred contains classes")
    balanced = sk_metrics.balanced_accuracy_score(labels, predictions)
  macro_f1 = sk_metrics.f1_score(
    labels, predictions, average="macro", zero_division=0.0
  )
  return {
    "balanced_accuracy": float(balanced),
    "macro_f1": float(macro_f1),
    "tail_recall": _mean_recall(recalls, tail),
    "head_recall": _mean_recall(recalls, head),
    "per_class_recall": [float(r) for r in recalls],
    "per_class_support": support.tolist(),
    "num_examples": int(labels.size),
  }


def evaluate_long_tail(
  probs: np.ndarray,
  labels: np.ndarray,
  mask: np.ndarray,
  client_names: Sequence[str],
  tail_classes: Sequence[int],
) -> dict:
  """Computes `long_tail_metrics` per client and pooled over clients.

  Args:
    probs: `[num_clients, max_examples, num_classes]` class probabilities.
    labels: `[num_clients, max_examples]` integer labels.
    mask: `[num_clients, max_examples]` bool, False on padding rows.
    client_names: One name per client, in client-axis order.
    tail_classes: Indices of the tail classes.

  Returns:
    {"tail_classes": list, "per_client": {name: metrics}, "pooled":
    metrics over every real row}.
  """
  probs = np.asarray(probs)
  labels = np.asarray(labels)
  mask = np.asarray(mask).astype(bool)
  if probs.ndim != 3 or labels.shape != probs.shape[:2]:
    raise ValueError(
      f"probs has shape {probs.shape} and labels {labels.shape}; expected "
      "[num_clients, max_examples, num_classes] and "
      "[num_clients, max_examples]."
    )
  if len(client_names) != probs.shape[0]:
    raise ValueError(
      f"{len(client_names)} client_names for {probs.shape[0]} clients."
    )
  per_client = {
    name: long_tail_metrics(probs[k], labels[k], mask[k], tail_classes)
    for k, name in enumerate(client_names)
  }
  pooled = long_tail_metrics(probs[mask], labels[mask], None, tail_classes)
  return {
    "tail_classes": [int(c) for c in sorted(tail_classes)],
    "per_client": per_client,
    "pooled": pooled,
  }


def _cell(value, width: int) -> str:
  if isinstance(value, int):
    return f"{value:>{width}d}"
  if value is None or not math.isfinite(value):
    return f"{'-':>{width}}"
  return f"{value:>{width}.3f}"


def format_long_tail_table(result: dict) -> str:
  """Formats `evaluate_long_tail` as a plain-text table, one row per site.

  Columns: balanced accuracy, macro F1, tail and head recall, the recall of
  every class ("-" where a site has no row of it) and the number of rows.
  The last line names the tail classes.
  """
  rows = [*result["per_client"].items(), ("pooled", result["pooled"])]
  num_classes = len(result["pooled"]["per_class_recall"])
  site_width = max(len("site"), *(len(name) for name, _ in rows)) + 2
  summary = ("balanced_accuracy", "macro_f1", "tail_recall", "head_recall")
  widths = [len(name) + 2 for name in summary]
  header = "site".ljust(site_width)
  header += "".join(
    f"{name:>{width}}" for name, width in zip(summary, widths, strict=True)
  )
  header += "".join(f"{f'recall_{c}':>10}" for c in range(num_classes))
  header += f"{'n':>8}"
  lines = [header, "-" * len(header)]
  for site, values in rows:
    line = site.ljust(site_width)
    line += "".join(
      _cell(values[name], width)
      for name, width in zip(summary, widths, strict=True)
    )
    line += "".join(_cell(r, 10) for r in values["per_class_recall"])
    line += _cell(values["num_examples"], 8)
    lines.append(line)
  lines.append(f"tail classes: {result['tail_classes']}")
  return "\n".join(lines)
