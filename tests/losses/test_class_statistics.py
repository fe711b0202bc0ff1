"""Global class counts from client histograms and the tail-class rule."""

import numpy as np
import pytest

from fedjax_med import losses
from fedjax_med.data.federated_data import FederatedData


@pytest.mark.parametrize(
  "counts,fraction,expected",
  [
    # Severity grades of Fed-Heart-Disease's training splits: grades 3 and
    # 4 hold 63 of 486 examples (13%), adding grade 2 would reach 23%.
    ([235, 139, 49, 48, 15], 0.2, [3, 4]),
    ([235, 139, 49, 48, 15], 0.25, [2, 3, 4]),
    # Ties go to the lower class index first.
    ([10, 5, 5, 80], 0.06, [1]),
    # The rarest class is always in the tail, the most frequent never.
    ([50, 50], 0.01, [0]),
    ([1, 1, 1, 97], 0.99, [0, 1, 2]),
  ],
)
def test_tail_classes_rule(counts, fraction, expected):
  np.testing.assert_array_equal(losses.tail_classes(counts, fraction), expected)


def test_tail_mask_marks_tail():
  np.testing.assert_array_equal(
    losses.tail_mask([5, 1, 9], 0.1), [False, True, False]
  )


def test_tail_classes_rejects_fraction():
  with pytest.raises(ValueError, match="fraction=1.5"):
    losses.tail_classes([3, 4], 1.5)


def test_global_counts_ignore_padding():
  clients = [
    (np.zeros((3, 1)), np.asarray([0, 2, 2])),
    (np.zeros((1, 1)), np.asarray([1])),
  ]
  data = FederatedData.from_clients(clients, clients, num_classes=3)
  histograms = losses.client_label_histograms(data.train, 3)
  np.testing.assert_array_equal(histograms, [[1, 0, 2], [0, 1, 0]])
  np.testing.assert_array_equal(
    losses.global_class_counts(data.train, 3), [1, 1, 2]
  )
