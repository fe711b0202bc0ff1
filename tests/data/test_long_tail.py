"""Long-tailed subsampling and partitions: exact profiles and invariants."""

import numpy as np
import pytest

from fedjax_med.data import long_tail
from fedjax_med.data.registry import load_dataset
from fedjax_med.data.sklearn_sources import load_digits_arrays
from fedjax_med.losses import global_class_counts


@pytest.mark.parametrize(
  "profile,ratio,expected",
  [
    # 100 * 10^(-c/2): 100, 31.6, 10.
    ("exponential", 10.0, [100, 31, 10]),
    # s = log 9 / log 3 = 2: 100, 100/4, 100/9.
    ("zipf", 9.0, [100, 25, 11]),
    ("exponential", 1.0, [100, 100, 100]),
    ("zipf", 1.0, [100, 100, 100]),
  ],
)
def test_class_sizes_hand_values(profile, ratio, expected):
  sizes = long_tail.long_tail_class_sizes(3, 100, ratio, profile)
  np.testing.assert_array_equal(sizes, expected)


def test_class_sizes_floor_exact_products():
  # 20 * 2^(-log 10 / log 2) is 2, but float64 evaluates it just below 2.
  sizes = long_tail.long_tail_class_sizes(2, 20, 10.0, "zipf")
  np.testing.assert_array_equal(sizes, [20, 2])


@pytest.mark.parametrize("profile", long_tail.PROFILES)
def test_subsample_follows_profile_exactly(profile):
  labels = load_digits_arrays(False).y
  kept = long_tail.long_tail_subsample(
    labels, imbalance_ratio=20.0, profile=profile, seed=3
  )
  n_max = np.bincount(labels).min()
  expected = long_tail.long_tail_class_sizes(10, n_max, 20.0, profile)
  np.testing.assert_array_equal(np.bincount(labels[kept]), expected)
  assert np.all(np.diff(kept) > 0)
  assert expected[-1] == n_max // 20


def test_subsample_rejects_short_class():
  labels = np.asarray([0] * 5 + [1] * 2)
  with pytest.raises(ValueError, match="class 1 has 2 examples"):
    long_tail.long_tail_subsample(labels, imbalance_ratio=1.0, n_max=5)


def test_class_sizes_reject_ratio_below_one():
  with pytest.raises(ValueError, match="imbalance_ratio=0.5"):
    long_tail.long_tail_class_sizes(3, 10, 0.5, "zipf")


def _partition(seed=0):
  labels = load_digits_arrays(False).y
  parts = long_tail.long_tail_partition(
    labels,
    num_clients=8,
    alpha=0.3,
    imbalance_ratio=10.0,
    seed=seed,
    min_partition_size=12,
  )
  return labels, parts


def test_partition_disjoint_complete_nonempty():
  labels, parts = _partition()
  kept = long_tail.long_tail_subsample(labels, imbalance_ratio=10.0, seed=0)
  union = np.concatenate(parts)
  assert len(union) == len(np.unique(union))
  np.testing.assert_array_equal(np.sort(union), kept)
  assert min(len(p) for p in parts) >= 12


def test_partition_deterministic_by_seed():
  _, first = _partition(seed=4)
  _, again = _partition(seed=4)
  _, other = _partition(seed=5)
  for a, b in zip(first, again, strict=True):
    np.testing.assert_array_equal(a, b)
  assert any(
    len(a) != len(b) or np.any(a != b)
    for a, b in zip(first, other, strict=True)
  )


def test_registry_digits_long_tail_counts():
  data = load_dataset(
    "digits_long_tail", profile="zipf", imbalance_ratio=8.0, seed=1
  )
  counts = global_class_counts(data.train, 10) + global_class_counts(
    data.test, 10
  )
  labels = load_digits_arrays(True).y
  expected = long_tail.long_tail_class_sizes(
    10, np.bincount(labels).min(), 8.0, "zipf"
  )
  np.testing.assert_array_equal(counts, expected)
  assert data.name == "digits_long_tail"
  assert data.num_clients == 10
  assert data.feature_shape == (8, 8, 1)
  assert np.all(data.train.num_examples > 0)


def test_registry_rejects_unknown_profile():
  with pytest.raises(ValueError, match="profile='pareto'"):
    load_dataset("digits_long_tail", profile="pareto")
