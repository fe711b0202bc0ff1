"""Metrics against hand-computed values and scikit-learn."""

import math

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from fedjax_med.metrics import classification


def _binary_probs(p1):
  p1 = np.asarray(p1, float)
  return np.stack([1 - p1, p1], axis=1)


def test_binary_metrics_match_hand_values():
  probs = _binary_probs([0.9, 0.2, 0.6, 0.4])
  labels = np.asarray([1, 0, 0, 1])
  m = classification.classification_metrics(probs, labels)
  assert m["accuracy"] == pytest.approx(0.5)
  assert m["balanced_accuracy"] == pytest.approx(0.5)
  assert m["auroc"] == pytest.approx(0.75)
  expected_loss = -np.mean(np.log([0.9, 0.8, 0.4, 0.4]))
  assert m["loss"] == pytest.approx(expected_loss)
  assert m["num_examples"] == 4


def test_ece_on_crafted_bins():
  # Two bins: confidence 0.9 (two rows, one right) and 0.6 (two rows, both
  # right): ECE = 0.5 * |0.5 - 0.9| + 0.5 * |1.0 - 0.6| = 0.4.
  probs = _binary_probs([0.9, 0.9, 0.6, 0.6])
  labels = np.asarray([1, 0, 1, 1])
  assert classification.expected_calibration_error(
    probs, labels
  ) == pytest.approx(0.4)


def test_multiclass_auroc_matches_sklearn():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(60, 3))
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  labels = rng.integers(0, 3, 60)
  m = classification.classification_metrics(probs, labels)
  expected = sk_metrics.roc_auc_score(labels, probs, multi_class="ovr")
  assert m["auroc"] == pytest.approx(expected)
  assert m["balanced_accuracy"] == pytest.approx(
    sk_metrics.balanced_accuracy_score(labels, probs.argmax(1))
  )


def test_single_class_auroc_is_nan():
  m = classification.classification_metrics(
    _binary_probs([0.9, 0.8]), np.asarray([1, 1])
  )
  assert math.isnan(m["auroc"])
  assert m["accuracy"] == 1.0


def test_padding_rows_are_ignored():
  # 10 real rows with loss -log(0.5) and 6 padding rows predicted wrong
  # with near-zero probability: unmasked, loss and accuracy would change.
  probs = _binary_probs([0.5] * 10 + [1e-9] * 6)
  labels = np.asarray([1] * 16)
  mask = np.asarray([True] * 10 + [False] * 6)
  m = classification.classification_metrics(probs, labels, mask)
  assert m["loss"] == pytest.approx(math.log(2))
  assert m["num_examples"] == 10
  unmasked = classification.classification_metrics(probs, labels)
  assert unmasked["loss"] > 2 * m["loss"]


def test_empty_mask_gives_nan_not_error():
  m = classification.classification_metrics(
    _binary_probs([0.3]), np.asarray([0]), np.asarray([False])
  )
  assert m["num_examples"] == 0
  assert math.isnan(m["accuracy"])


def _client_with_accuracy(correct, total, max_examples):
  probs = np.zeros((max_examples, 2))
  probs[:, 1] = 0.9
  labels = np.zeros(max_examples, int)
  labels[:correct] = 1
  mask = np.arange(max_examples) < total
  return probs, labels, mask


def test_client_mean_and_example_weighted_differ():
  # Client A: accuracy 0.9 on 10 rows; client B: 0.5 on 990 rows.
  a = _client_with_accuracy(9, 10, 990)
  b = _client_with_accuracy(495, 990, 990)
  probs, labels, mask = (np.stack([x, y]) for x, y in zip(a, b, strict=True))
  result = classification.evaluate_clients(probs, labels, mask, ["A", "B"])
  assert result["per_client"]["A"]["accuracy"] == pytest.approx(0.9)
  assert result["per_client"]["B"]["accuracy"] == pytest.approx(0.5)
  assert result["example_weighted"]["accuracy"] == pytest.approx(0.504)
  assert result["client_mean"]["accuracy"] == pytest.approx(0.70)
  assert result["pooled"]["accuracy"] == pytest.approx(0.504)
  assert result["worst_client"] == {"name": "B", "accuracy": 0.5}
  table = classification.format_client_table(result)
  assert "worst site: B" in table
  assert "example-weighted" in table
