"""Long-tail metrics against scikit-learn and hand-computed values."""

import math

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from fedjax_med.metrics import long_tail


def _one_hot_probs(predictions, num_classes):
  return np.eye(num_classes)[np.asarray(predictions)]


def test_hand_values():
  probs = _one_hot_probs([0, 1, 1, 0], 4)
  result = long_tail.long_tail_metrics(probs, [0, 0, 1, 2], tail_classes=[2, 3])
  np.testing.assert_allclose(
    result["per_class_recall"][:3], [0.5, 1.0, 0.0], atol=1e-12
  )
  assert math.isnan(result["per_class_recall"][3])
  assert result["tail_recall"] == 0.0  # Class 3 has no row.
  assert result["head_recall"] == 0.75
  assert result["balanced_accuracy"] == pytest.approx(0.5)
  assert result["per_class_support"] == [2, 1, 1, 0]
  assert result["num_examples"] == 4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_with_mask(seed):
  rng = np.random.default_rng(seed)
  num_classes = 5
  labels = rng.choice(num_classes, size=80, p=[0.5, 0.25, 0.15, 0.07, 0.03])
  probs = rng.dirichlet(np.ones(num_classes), size=80)
  mask = rng.random(80) < 0.8
  result = long_tail.long_tail_metrics(probs, labels, mask, tail_classes=[3, 4])

  y, predictions = labels[mask], probs[mask].argmax(1)
  recalls = sk_metrics.recall_score(
    y, predictions, labels=range(num_classes), average=None, zero_division=0
  )
  present = np.bincount(y, minlength=num_classes) > 0
  assert result["balanced_accuracy"] == pytest.approx(
    sk_metrics.balanced_accuracy_score(y, predictions)
  )
  assert result["macro_f1"] == pytest.approx(
    sk_metrics.f1_score(y, predictions, average="macro")
  )
  np.testing.assert_allclose(
    np.asarray(result["per_class_recall"])[present], recalls[present]
  )
  tail_present = [c for c in (3, 4) if present[c]]
  assert result["tail_recall"] == pytest.approx(np.mean(recalls[tail_present]))
  assert result["num_examples"] == int(mask.sum())


def test_no_rows_gives_nan():
  result = long_tail.long_tail_metrics(
    np.zeros((3, 3)), [0, 1, 2], np.zeros(3, bool), tail_classes=[2]
  )
  assert math.isnan(result["balanced_accuracy"])
  assert math.isnan(result["tail_recall"])
  assert result["num_examples"] == 0


def test_rejects_tail_outside_classes():
  with pytest.raises(ValueError, match=r"\[5\]"):
    long_tail.long_tail_metrics(np.eye(3), [0, 1, 2], tail_classes=[5])


def test_evaluate_per_client_and_pooled():
  rng = np.random.default_rng(3)
  probs = rng.dirichlet(np.ones(4), size=(3, 20))
  labels = rng.integers(0, 4, size=(3, 20))
  mask = np.ones((3, 20), bool)
  mask[2, 5:] = False
  result = long_tail.evaluate_long_tail(
    probs, labels, mask, ("a", "b", "c"), tail_classes=[3]
  )
  for k, name in enumerate("abc"):
    expected = long_tail.long_tail_metrics(probs[k], labels[k], mask[k], [3])
    assert result["per_client"][name]["macro_f1"] == expected["macro_f1"]
  pooled_f1 = sk_metrics.f1_score(
    labels[mask], probs[mask].argmax(1), average="macro"
  )
  assert result["pooled"]["macro_f1"] == pytest.approx(pooled_f1)
  assert result["pooled"]["num_examples"] == 45
  assert result["tail_classes"] == [3]

  table = long_tail.format_long_tail_table(result)
  assert "recall_3" in table
  assert table.splitlines()[-1] == "tail classes: [3]"
  assert len(table.splitlines()) == 2 + 4 + 1
