"""Classification metrics against closed forms, sklearn and invariants."""

import math

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from fedjax_med.metrics import (
  classification_metrics,
  evaluate_clients,
  expected_calibration_error,
  format_client_table,
)


def _binary_probs(p1):
  p1 = np.asarray(p1, np.float64)
  return np.stack([1.0 - p1, p1], axis=1)


def _random_probs(rng, n, num_classes):
  logits = rng.normal(size=(n, num_classes))
  return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_metrics_match_sklearn_with_mask(num_classes):
  rng = np.random.default_rng(num_classes)
  probs = _random_probs(rng, 80, num_classes)
  labels = rng.integers(0, num_classes, 80)
  mask = rng.random(80) < 0.7
  m = classification_metrics(probs, labels, mask)

  real_probs, real_labels = probs[mask], labels[mask]
  predictions = real_probs.argmax(axis=1)
  if num_classes == 2:
    auroc = sk_metrics.roc_auc_score(real_labels, real_probs[:, 1])
  else:
    auroc = sk_metrics.roc_auc_score(
      real_labels, real_probs, multi_class="ovr", average="macro"
    )
  assert m["num_examples"] == int(mask.sum())
  assert m["accuracy"] == pytest.approx(
    sk_metrics.accuracy_score(real_labels, predictions)
  )
  assert m["balanced_accuracy"] == pytest.approx(
    sk_metrics.balanced_accuracy_score(real_labels, predictions)
  )
  assert m["auroc"] == pytest.approx(auroc)
  assert m["loss"] == pytest.approx(
    sk_metrics.log_loss(real_labels, real_probs, labels=range(num_classes))
  )


def test_binary_auroc_hand_value():
  # Positives score 0.8 and 0.4, negatives 0.6 and 0.2: 3 of the 4
  # positive-negative pairs are ordered correctly.
  probs = _binary_probs([0.8, 0.4, 0.6, 0.2])
  labels = np.asarray([1, 1, 0, 0])
  assert classification_metrics(probs, labels)["auroc"] == pytest.approx(0.75)


def test_auroc_skips_absent_class():
  # Class 2 is absent; the macro average runs over classes 0 and 1 only.
  rng = np.random.default_rng(1)
  probs = _random_probs(rng, 40, 3)
  labels = rng.integers(0, 2, 40)
  per_class = [
    sk_metrics.roc_auc_score(labels == c, probs[:, c]) for c in (0, 1)
  ]
  auroc = classification_metrics(probs, labels)["auroc"]
  assert auroc == pytest.approx(np.mean(per_class))


@pytest.mark.parametrize("num_classes", [2, 4])
def test_auroc_single_class_is_nan(num_classes):
  rng = np.random.default_rng(2)
  probs = _random_probs(rng, 6, num_classes)
  m = classification_metrics(probs, np.ones(6, int))
  assert math.isnan(m["auroc"])
  assert math.isfinite(m["accuracy"])


def test_balanced_accuracy_hand_value():
  # Class 0: 3 of 4 right; class 1: 1 of 2 right. Mean recall 0.625,
  # plain accuracy 4 / 6.
  probs = _binary_probs([0.1, 0.2, 0.3, 0.9, 0.8, 0.4])
  labels = np.asarray([0, 0, 0, 0, 1, 1])
  m = classification_metrics(probs, labels)
  assert m["balanced_accuracy"] == pytest.approx(0.625)
  assert m["accuracy"] == pytest.approx(4 / 6)


def test_loss_clips_zero_probability():
  probs = _binary_probs([0.0, 0.5])
  labels = np.asarray([1, 1])
  expected = (-math.log(1e-7) - math.log(0.5)) / 2
  assert classification_metrics(probs, labels)["loss"] == pytest.approx(
    expected
  )


# Rows: confidence 0.9 right, 0.9 wrong, 0.65 right, 0.65 right.
# 15 or 4 bins separate 0.9 from 0.65: 0.5 * 0.4 + 0.5 * 0.35 = 0.375.
# One bin compares the means: |0.75 - 0.775| = 0.025.
@pytest.mark.parametrize(
  "num_bins, expected", [(15, 0.375), (4, 0.375), (1, 0.025)]
)
def test_ece_crafted_bins(num_bins, expected):
  # Row 1 predicts class 0 with confidence 0.9 and is wrong.
  probs = _binary_probs([0.9, 0.1, 0.65, 0.65])
  labels = np.asarray([1, 1, 1, 1])
  ece = expected_calibration_error(probs, labels, num_bins)
  assert ece == pytest.approx(expected)
  m = classification_metrics(probs, labels, num_bins=num_bins)
  assert m["ece"] == pytest.approx(expected)


def test_ece_bins_closed_on_right():
  # With 4 bins, confidence 0.75 belongs to (0.5, 0.75] and 0.8 to
  # (0.75, 1]: 0.5 * |1 - 0.75| + 0.5 * |0 - 0.8| = 0.525. Bins closed on
  # the left would put both in one bin and give |0.5 - 0.775| = 0.275.
  probs = _binary_probs([0.75, 0.8])
  labels = np.asarray([1, 0])
  assert expected_calibration_error(probs, labels, 4) == pytest.approx(0.525)


def test_ece_zero_when_calibrated():
  # Confidence 0.8 on five rows, four right.
  probs = _binary_probs([0.8] * 5)
  labels = np.asarray([1, 1, 1, 1, 0])
  assert expected_calibration_error(probs, labels) == pytest.approx(0.0)


def test_ece_rejects_zero_bins():
  with pytest.raises(ValueError, match="num_bins=0"):
    expected_calibration_error(_binary_probs([0.5]), np.asarray([0]), 0)


def test_padding_rows_are_ignored():
  # 10 real rows with loss 1.0 and 6 padding rows with loss 7.0. Three
  # classes make the real rows right and the padding rows wrong.
  def row(true_prob):
    rest = (1.0 - true_prob) / 2
    return [true_prob, rest, rest]

  probs = np.asarray([row(math.exp(-1.0))] * 10 + [row(math.exp(-7.0))] * 6)
  labels = np.zeros(16, int)
  mask = np.arange(16) < 10
  m = classification_metrics(probs, labels, mask)
  assert m["loss"] == pytest.approx(1.0)
  assert m["accuracy"] == 1.0
  assert m["ece"] == pytest.approx(1.0 - math.exp(-1.0))
  assert m["num_examples"] == 10
  unmasked = classification_metrics(probs, labels)
  assert unmasked["loss"] == pytest.approx(3.25)
  assert unmasked["accuracy"] == pytest.approx(10 / 16)


def test_padding_labels_are_not_checked():
  probs = _binary_probs([0.9, 0.5])
  labels = np.asarray([1, -1])
  m = classification_metrics(probs, labels, np.asarray([True, False]))
  assert m["num_examples"] == 1


def test_empty_mask_gives_nan():
  m = classification_metrics(
    _binary_probs([0.3, 0.6]), np.asarray([0, 1]), np.zeros(2, bool)
  )
  assert m["num_examples"] == 0
  for name in ("accuracy", "balanced_accuracy", "auroc", "ece", "loss"):
    assert math.isnan(m[name]), name


def test_rejects_label_out_of_range():
  with pytest.raises(ValueError, match="label 2 is outside"):
    classification_metrics(_binary_probs([0.3]), np.asarray([2]))


def test_rejects_single_probability_column():
  with pytest.raises(ValueError, match="two columns"):
    classification_metrics(np.full((3, 1), 0.5), np.zeros(3, int))


def _client_with_accuracy(num_correct, num_examples, max_examples):
  """Returns binary probs, labels and mask with the given accuracy.

  Every row predicts class 1 with confidence 0.9; the first `num_correct`
  rows have label 1. Padding rows are predicted wrong.
  """
  probs = _binary_probs(np.full(max_examples, 0.9))
  labels = np.zeros(max_examples, int)
  labels[:num_correct] = 1
  mask = np.arange(max_examples) < num_examples
  return probs, labels, mask


def _stack(*clients):
  return tuple(np.stack(parts) for parts in zip(*clients, strict=True))


def test_client_mean_vs_example_weighted():
  # Client A: accuracy 0.9 on 10 examples; B: 0.5 on 990 examples.
  probs, labels, mask = _stack(
    _client_with_accuracy(9, 10, 990), _client_with_accuracy(495, 990, 990)
  )
  result = evaluate_clients(probs, labels, mask, ["A", "B"])
  assert result["per_client"]["A"]["accuracy"] == pytest.approx(0.9)
  assert result["per_client"]["A"]["num_examples"] == 10
  assert result["per_client"]["B"]["accuracy"] == pytest.approx(0.5)
  assert result["example_weighted"]["accuracy"] == pytest.approx(0.504)
  assert result["client_mean"]["accuracy"] == pytest.approx(0.70)
  assert result["pooled"]["accuracy"] == pytest.approx(0.504)
  assert result["pooled"]["num_examples"] == 1000
  assert result["example_weighted"]["num_examples"] == 1000
  assert result["client_mean"]["num_clients"] == 2
  assert result["worst_client"] == {"name": "B", "accuracy": 0.5}


def test_pooled_equals_weighted_accuracy_and_loss():
  rng = np.random.default_rng(3)
  probs = np.stack([_random_probs(rng, 30, 3) for _ in range(4)])
  labels = rng.integers(0, 3, (4, 30))
  mask = np.arange(30)[None, :] < np.asarray([[5], [30], [12], [21]])
  result = evaluate_clients(probs, labels, mask, list("ABCD"))
  for name in ("accuracy", "loss"):
    assert result["pooled"][name] == pytest.approx(
      result["example_weighted"][name]
    )
  per_client_accuracy = [m["accuracy"] for m in result["per_client"].values()]
  assert result["client_mean"]["accuracy"] == pytest.approx(
    np.mean(per_client_accuracy)
  )


def test_empty_client_left_out():
  probs, labels, mask = _stack(
    _client_with_accuracy(3, 4, 6),
    _client_with_accuracy(0, 0, 6),
    _client_with_accuracy(3, 6, 6),
  )
  result = evaluate_clients(probs, labels, mask, ["A", "empty", "C"])
  assert result["per_client"]["empty"]["num_examples"] == 0
  assert math.isnan(result["per_client"]["empty"]["accuracy"])
  assert result["client_mean"]["num_clients"] == 2
  assert result["client_mean"]["accuracy"] == pytest.approx((0.75 + 0.5) / 2)
  assert result["worst_client"] == {"name": "C", "accuracy": 0.5}


def test_nan_auroc_left_out_of_means():
  # Client A has one class, so its AUROC is NaN and the means use B alone.
  probs = np.stack(
    [_binary_probs([0.9, 0.8, 0.7, 0.6]), _binary_probs([0.8, 0.4, 0.6, 0.2])]
  )
  labels = np.asarray([[1, 1, 1, 1], [1, 1, 0, 0]])
  result = evaluate_clients(probs, labels, np.ones((2, 4), bool), ["A", "B"])
  assert math.isnan(result["per_client"]["A"]["auroc"])
  assert result["client_mean"]["auroc"] == pytest.approx(0.75)
  assert result["example_weighted"]["auroc"] == pytest.approx(0.75)


def test_no_real_rows_anywhere():
  probs, labels, mask = _stack(_client_with_accuracy(0, 0, 3))
  result = evaluate_clients(probs, labels, mask, ["A"])
  assert result["worst_client"]["name"] is None
  assert math.isnan(result["client_mean"]["accuracy"])
  assert "worst site: none" in format_client_table(result)


def test_rejects_wrong_number_of_names():
  probs, labels, mask = _stack(_client_with_accuracy(1, 2, 3))
  with pytest.raises(ValueError, match="2 client_names for 1 clients"):
    evaluate_clients(probs, labels, mask, ["A", "B"])


def test_rejects_duplicate_names():
  probs, labels, mask = _stack(
    _client_with_accuracy(1, 2, 3), _client_with_accuracy(1, 2, 3)
  )
  with pytest.raises(ValueError, match="duplicates"):
    evaluate_clients(probs, labels, mask, ["A", "A"])


def test_table_rows_and_worst_site():
  probs, labels, mask = _stack(
    _client_with_accuracy(9, 10, 990), _client_with_accuracy(495, 990, 990)
  )
  result = evaluate_clients(probs, labels, mask, ["cleveland", "hungary"])
  lines = format_client_table(result).splitlines()
  assert lines[0].split() == [
    "site",
    "accuracy",
    "balanced_accuracy",
    "auroc",
    "ece",
    "loss",
    "n",
  ]
  row_names = [line.split()[0] for line in lines[2:7]]
  assert row_names == [
    "cleveland",
    "hungary",
    "pooled",
    "client",
    "example-weighted",
  ]
  assert lines[2].split()[1] == "0.9000"
  assert lines[2].split()[-1] == "10"
  assert lines[5].split()[2] == "0.7000"  # "client mean" is two words.
  assert lines[6].split()[1] == "0.5040"
  assert lines[-1] == "worst site: hungary (accuracy 0.5000)"
