"""Classification metrics per client, pooled, and averaged two ways.

All metrics are computed on the host from class probabilities, counting only
real rows (padding rows have `mask == False`). Under non-IID client sizes the
two usual summaries differ, so both are reported and labelled:
"example_weighted" (each client weighted by its number of test examples) and
"client_mean" (each client counts once). "pooled" evaluates every real test
row of every client together; accuracy and loss of "pooled" equal the
example-weighted means, while AUROC, balanced accuracy and calibration error
do not average that way.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn import metrics as sk_metrics

METRIC_NAMES = (
  "accuracy",
  "balanced_accuracy",
  "auroc",
  "ece",
  "loss",
  "num_examples",
)


def expected_calibration_error(
  probs: np.ndarray, labels: np.ndarray, num_bins: int = 15
) -> float:
  """Expected calibration error over the top-label confidence.

  Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks",
  ICML 2017: confidences are binned into `num_bins` equal-width bins over
  (0, 1], and ECE is the example-weighted mean of |accuracy - confidence|
  over the bins.
  """
  if len(labels) == 0:
    return math.nan
  confidence = probs.max(axis=1)
  correct = (probs.argmax(axis=1) == labels).astype(float)
  # Bin b covers (b / num_bins, (b + 1) / num_bins]; confidence 0 goes to 0.
  bins = np.clip(np.ceil(confidence * num_bins) - 1, 0, num_bins - 1)
  ece = 0.0
  for b in range(num_bins):
    in_bin = bins == b
    if in_bin.any():
      gap = abs(correct[in_bin].mean() - confidence[in_bin].mean())
      ece += in_bin.mean() * gap
  return float(ece)


def _auroc(probs: np.ndarray, labels: np.ndarray) -> float:
  present = np.unique(labels)
  if len(present) < 2:
    return math.nan  # Undefined with a single class.
  num_classes = probs.shape[1]
  if num_classes == 2:
    return float(sk_metrics.roc_auc_score(labels, probs[:, 1]))
  if len(present) < num_classes:
    return math.nan  # One-vs-rest needs every class in the labels.
  return float(
    sk_metrics.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
  )


def classification_metrics(
  probs: np.ndarray,
  labels: np.ndarray,
  mask: np.ndarray | None = None,
  num_bins: int = 15,
) -> dict[str, float]:
  """Accuracy, balanced accuracy, AUROC, ECE, loss and the example count.

  Args:
    probs: `[n, num_classes]` class probabilities (binary tasks: `[n, 2]`).
    labels: `[n]` integer labels.
    mask: `[n]` bool; False rows are padding and ignored. None keeps all.
    num_bins: Bins for the expected calibration error.

  Returns:
    A dict of floats; every metric is NaN when no row is real, and AUROC is
    NaN when the labels hold fewer classes than AUROC needs.
  """
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels)
  if mask is not None:
    keep = np.asarray(mask, bool)
    probs, labels = probs[keep], labels[keep]
  n = len(labels)
  if n == 0:
    return {name: math.nan for name in METRIC_NAMES} | {"num_examples": 0}
  predictions = probs.argmax(axis=1)
  true_probs = np.clip(probs[np.arange(n), labels], 1e-7, 1.0)
  with warnings.catch_warnings():
    # A site whose test rows hold a single class is normal here (nearly all
    # Swiss patients are sick), so sklearn's warning about it is noise.
    warnings.simplefilter("ignore", UserWarning)
    balanced = sk_metrics.balanced_accuracy_score(labels, predictions)
  return {
    "accuracy": float(np.mean(predictions == labels)),
    "balanced_accuracy": float(balanced),
    "auroc": _auroc(probs, labels),
    "ece": expected_calibration_error(probs, labels, num_bins),
    "loss": float(-np.mean(np.log(true_probs))),
    "num_examples": n,
  }


def evaluate_clients(
  probs: np.ndarray,
  labels: np.ndarray,
  mask: np.ndarray,
  client_names: Sequence[str],
) -> dict:
  """Metrics for each client, pooled, and averaged over clients.

  Args:
    probs: `[num_clients, max_examples, num_classes]`.
    labels: `[num_clients, max_examples]`.
    mask: `[num_clients, max_examples]`, False on padding rows.
    client_names: One name per client.

  Returns:
    {"per_client": {name: metrics}, "pooled": metrics, "client_mean": ...,
    "example_weighted": ..., "worst_client": {"name", "accuracy"}}. Means
    skip clients without test rows; the worst client is the one with the
    lowest accuracy among clients with test rows.
  """
  probs, labels, mask = (np.asarray(a) for a in (probs, labels, mask))
  per_client = {
    name: classification_metrics(probs[k], labels[k], mask[k])
    for k, name in enumerate(client_names)
  }
  keep = mask.astype(bool)
  pooled = classification_metrics(probs[keep], labels[keep])

  present = [m for m in per_client.values() if m["num_examples"] > 0]
  sizes = np.asarray([m["num_examples"] for m in present], float)
  client_mean, example_weighted = {}, {}
  for name in METRIC_NAMES:
    if name == "num_examples":
      continue
    values = np.asarray([m[name] for m in present], float)
    finite = np.isfinite(values)
    client_mean[name] = (
      float(values[finite].mean()) if finite.any() else math.nan
    )
    example_weighted[name] = (
      float(np.average(values[finite], weights=sizes[finite]))
      if finite.any()
      else math.nan
    )
  client_mean["num_clients"] = len(present)
  example_weighted["num_examples"] = int(sizes.sum())

  worst_name, worst_accuracy = None, math.nan
  for name, m in per_client.items():
    if m["num_examples"] > 0 and not worst_accuracy <= m["accuracy"]:
      worst_name, worst_accuracy = name, m["accuracy"]
  return {
    "per_client": per_client,
    "pooled": pooled,
    "client_mean": client_mean,
    "example_weighted": example_weighted,
    "worst_client": {"name": worst_name, "accuracy": worst_accuracy},
  }


def format_client_table(
  result: dict,
  metrics: Sequence[str] = (
    "accuracy",
    "balanced_accuracy",
    "auroc",
    "ece",
    "loss",
  ),
) -> str:
  """Formats `evaluate_clients` output as a plain-text per-site table."""
  rows = [(name, m) for name, m in result["per_client"].items()]
  rows += [
    ("pooled", result["pooled"]),
    ("client mean", result["client_mean"]),
    ("example-weighted", result["example_weighted"]),
  ]
  width = max(len(name) for name, _ in rows) + 2
  columns = [max(len(m), 8) + 2 for m in metrics]
  header = "site".ljust(width)
  header += "".join(f"{m:>{c}}" for m, c in zip(metrics, columns, strict=True))
  header += f"{'n':>7}"
  lines = [header, "-" * len(header)]
  for name, values in rows:
    line = name.ljust(width)
    line += "".join(
      f"{values.get(m, math.nan):>{c}.4f}"
      for m, c in zip(metrics, columns, strict=True)
    )
    count = values.get("num_examples")
    line += f"{count:>7d}" if isinstance(count, int) else " " * 7
    lines.append(line)
  worst = result["worst_client"]
  lines.append(
    f"worst site: {worst['name']} (accuracy {worst['accuracy']:.4f})"
  )
  return "\n".join(lines)
