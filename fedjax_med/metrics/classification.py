"""Classification metrics per client, pooled, and averaged two ways.

All metrics are computed on the host with numpy and `sklearn.metrics` from
class probabilities, counting only real rows (padding rows have
`mask == False`). Under non-IID client sizes the two usual summaries of
per-client metrics differ, so `evaluate_clients` reports both and labels them:
"example_weighted" (each client weighted by its number of test examples) and
"client_mean" (each client counts once). "pooled" evaluates every real test
row of every client together. Pooled accuracy and loss equal their
example-weighted means, but AUROC, balanced accuracy and calibration error do
not average that way.

Choices where the usual definitions leave room:

- AUROC for more than two classes is the one-vs-rest macro average over the
  classes present in the labels. sklearn's `roc_auc_score(multi_class="ovr")`
  raises when a class is absent, which is common at a single site under label
  skew, so absent classes are skipped instead. With every class present the
  two agree.
- ECE follows Guo et al., "On Calibration of Modern Neural Networks" (ICML
  2017): the top-label confidence is binned into equal-width bins that are
  closed on the right, `(b / num_bins, (b + 1) / num_bins]`, and ECE is the
  example-weighted mean over bins of |accuracy - mean confidence|.
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

# Probabilities are clipped at this floor before the log in the loss, so a
# confident mistake costs at most -log(1e-7), about 16.1.
PROB_FLOOR = 1e-7


def expected_calibration_error(
  probs: np.ndarray, labels: np.ndarray, num_bins: int = 15
) -> float:
  """Computes the expected calibration error of the top-label confidence.

  Args:
    probs: `[n, num_classes]` class probabilities of real rows only.
    labels: `[n]` integer labels.
    num_bins: Number of equal-width confidence bins over [0, 1].

  Returns:
    ECE in [0, 1], or NaN when `n == 0`.
  """
  if not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
    raise ValueError(f"num_bins={num_bins!r} is invalid; use an int >= 1.")
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels)
  n = len(labels)
  if n == 0:
    return math.nan

  confidence = probs.max(axis=1)
  correct = (probs.argmax(axis=1) == labels).astype(np.float64)

  # searchsorted on the inner edges with side="left" puts a confidence that
  # equals an edge into the lower bin, so bins are closed on the right.
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  bins = np.searchsorted(edges[1:-1], confidence, side="left")
  correct_per_bin = np.bincount(bins, weights=correct, minlength=num_bins)
  confidence_per_bin = np.bincount(bins, weights=confidence, minlength=num_bins)

  # Each bin contributes (|B| / n) * |acc(B) - conf(B)|, which is
  # |sum of correct - sum of confidence| / n.
  return float(np.abs(correct_per_bin - confidence_per_bin).sum() / n)


def _auroc(probs: np.ndarray, labels: np.ndarray) -> float:
  present = np.unique(labels)
  if len(present) < 2:
    return math.nan  # AUROC is undefined with a single class.
  if probs.shape[1] == 2:
    return float(sk_metrics.roc_auc_score(labels, probs[:, 1]))
  per_class = [
    sk_metrics.roc_auc_score(labels == c, probs[:, c]) for c in present
  ]
  return float(np.mean(per_class))


def _balanced_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
  with warnings.catch_warnings():
    # sklearn (1.9) warns when a prediction names a class absent from the
    # labels, or when labels and predictions contain a single class. Both are
    # normal at one site, and the score is still the mean recall over the
    # classes in the labels.
    warnings.filterwarnings("ignore", message="y_pred contains classes")
    warnings.filterwarnings("ignore", message="A single label was found")
    return float(sk_metrics.balanced_accuracy_score(labels, predictions))


def _check_inputs(
  probs: np.ndarray, labels: np.ndarray, mask: np.ndarray
) -> None:
  if probs.ndim != 2 or probs.shape[1] < 2:
    raise ValueError(
      f"probs has shape {probs.shape}; expected [n, num_classes] with "
      "num_classes >= 2. Binary tasks pass two columns, [1 - p, p]."
    )
  if labels.shape != probs.shape[:1]:
    raise ValueError(
      f"labels has shape {labels.shape} but probs has shape {probs.shape}; "
      f"expected labels of shape ({probs.shape[0]},)."
    )
  if mask.shape != labels.shape:
    raise ValueError(
      f"mask has shape {mask.shape} but labels has shape {labels.shape}; "
      "pass one bool per row."
    )


def classification_metrics(
  probs: np.ndarray,
  labels: np.ndarray,
  mask: np.ndarray | None = None,
  num_bins: int = 15,
) -> dict[str, float]:
  """Computes accuracy, balanced accuracy, AUROC, ECE and loss.

  Args:
    probs: `[n, num_classes]` class probabilities; binary tasks pass
      `[n, 2]`.
    labels: `[n]` integer labels. Labels of padding rows are not read.
    mask: `[n]` bool, False on padding rows, which every metric ignores.
      None treats every row as real.
    num_bins: Number of confidence bins for the expected calibration error.

  Returns:
    {"accuracy", "balanced_accuracy", "auroc", "ece", "loss": float,
    "num_examples": int}. "loss" is the mean negative log-likelihood of the
    true class with probabilities clipped at `PROB_FLOOR`. With no real row
    every metric is NaN and "num_examples" is 0. AUROC is NaN when the real
    rows contain a single class.
  """
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels)
  if mask is None:
    mask = np.ones(labels.shape, bool)
  mask = np.asarray(mask).astype(bool)
  _check_inputs(probs, labels, mask)

  probs, labels = probs[mask], labels[mask]
  n = len(labels)
  if n == 0:
    nan_metrics = {name: math.nan for name in METRIC_NAMES}
    return nan_metrics | {"num_examples": 0}

  num_classes = probs.shape[1]
  int_labels = labels.astype(np.int64)
  if np.any(int_labels != labels):
    raise ValueError(
      f"labels {labels[:5]} are not integers; pass integer class indices."
    )
  out_of_range = (int_labels < 0) | (int_labels >= num_classes)
  if np.any(out_of_range):
    raise ValueError(
      f"label {int_labels[out_of_range][0]} is outside [0, {num_classes}) "
      f"for probs with {num_classes} classes; check the label encoding or "
      "mark the row as padding in the mask."
    )
  labels = int_labels

  predictions = probs.argmax(axis=1)
  true_class_probs = np.clip(probs[np.arange(n), labels], PROB_FLOOR, 1.0)
  return {
    "accuracy": float(np.mean(predictions == labels)),
    "balanced_accuracy": _balanced_accuracy(labels, predictions),
    "auroc": _auroc(probs, labels),
    "ece": expected_calibration_error(probs, labels, num_bins),
    "loss": float(-np.mean(np.log(true_class_probs))),
    "num_examples": n,
  }


def _average_over_clients(
  present: list[dict[str, float]],
) -> tuple[dict[str, float], dict[str, float]]:
  """Returns the client mean and the example-weighted mean of each metric."""
  sizes = np.asarray([m["num_examples"] for m in present], np.float64)
  client_mean, example_weighted = {}, {}
  for name in METRIC_NAMES:
    if name == "num_examples":
      continue
    values = np.asarray([m[name] for m in present], np.float64)
    finite = np.isfinite(values)
    if not finite.any():
      client_mean[name] = math.nan
      example_weighted[name] = math.nan
      continue
    client_mean[name] = float(values[finite].mean())
    example_weighted[name] = float(
      np.average(values[finite], weights=sizes[finite])
    )
  client_mean["num_clients"] = len(present)
  example_weighted["num_examples"] = int(sizes.sum())
  return client_mean, example_weighted


def evaluate_clients(
  probs: np.ndarray,
  labels: np.ndarray,
  mask: np.ndarray,
  client_names: Sequence[str],
  num_bins: int = 15,
) -> dict:
  """Computes metrics per client, pooled, and averaged over clients.

  Args:
    probs: `[num_clients, max_examples, num_classes]` class probabilities.
    labels: `[num_clients, max_examples]` integer labels.
    mask: `[num_clients, max_examples]` bool, False on padding rows.
    client_names: One unique name per client, in client-axis order.
    num_bins: Number of confidence bins for the expected calibration error.

  Returns:
    A dict with
      "per_client": {name: metrics of `classification_metrics`},
      "pooled": metrics over the real rows of all clients together,
      "client_mean": unweighted mean over clients of each metric, plus
        "num_clients", the number of clients averaged,
      "example_weighted": mean over clients weighted by "num_examples", plus
        "num_examples", the total,
      "worst_client": {"name", "accuracy"} of the client with the lowest
        accuracy (the first in client order on ties).
    Clients without real rows are left out of both means and of the worst
    client, and a client whose metric is NaN (AUROC at a single-class site)
    is left out of the means of that metric. With no real row anywhere the
    means are NaN and the worst client is {"name": None, "accuracy": NaN}.
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
  if mask.shape != labels.shape:
    raise ValueError(
      f"mask has shape {mask.shape} but labels has shape {labels.shape}."
    )
  client_names = list(client_names)
  if len(client_names) != probs.shape[0]:
    raise ValueError(
      f"{len(client_names)} client_names for {probs.shape[0]} clients in "
      "probs; pass one name per client."
    )
  if len(set(client_names)) != len(client_names):
    raise ValueError(
      f"client_names {client_names} contain duplicates; names must be "
      "unique because they key the per-client results."
    )

  per_client = {
    name: classification_metrics(probs[k], labels[k], mask[k], num_bins)
    for k, name in enumerate(client_names)
  }
  pooled = classification_metrics(probs[mask], labels[mask], None, num_bins)

  present = {name: m for name, m in per_client.items() if m["num_examples"] > 0}
  client_mean, example_weighted = _average_over_clients(list(present.values()))

  worst_client = {"name": None, "accuracy": math.nan}
  if present:
    worst_name = min(present, key=lambda name: present[name]["accuracy"])
    worst_client = {
      "name": worst_name,
      "accuracy": present[worst_name]["accuracy"],
    }

  return {
    "per_client": per_client,
    "pooled": pooled,
    "client_mean": client_mean,
    "example_weighted": example_weighted,
    "worst_client": worst_client,
  }


def _format_cell(value, width: int) -> str:
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    return f"{value:>{width}d}"
  if value is None:
    return " " * width
  return f"{value:>{width}.4f}"


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
  """Formats the output of `evaluate_clients` as a plain-text table.

  Args:
    result: The dict returned by `evaluate_clients`.
    metrics: Metric names, one column each.

  Returns:
    One row per client, then rows for pooled, client mean and
    example-weighted, a column "n" with the number of examples, and a last
    line naming the site with the lowest accuracy.
  """
  rows = list(result["per_client"].items())
  rows += [
    ("pooled", result["pooled"]),
    ("client mean", result["client_mean"]),
    ("example-weighted", result["example_weighted"]),
  ]
  site_width = max(len("site"), *(len(name) for name, _ in rows)) + 2
  columns = [(name, max(len(name), 8) + 2) for name in metrics]
  columns.append(("num_examples", 8))

  header = "site".ljust(site_width)
  header += "".join(f"{name:>{width}}" for name, width in columns[:-1])
  header += f"{'n':>8}"
  lines = [header, "-" * len(header)]
  for site, values in rows:
    line = site.ljust(site_width)
    line += "".join(
      _format_cell(values.get(name), width) for name, width in columns
    )
    lines.append(line.rstrip())

  worst = result["worst_client"]
  if worst["name"] is None:
    lines.append("worst site: none (no client has test examples)")
  else:
    lines.append(
      f"worst site: {worst['name']} (accuracy {worst['accuracy']:.4f})"
    )
  return "\n".join(lines)
