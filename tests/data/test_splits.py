"""Tests for per-client train/test splits and the patient leakage guard."""

import math

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from fedjax_med.data import splits


@pytest.mark.parametrize("n", [2, 7, 46, 303])
@pytest.mark.parametrize("test_fraction", [0.2, 0.34, 0.5])
def test_sizes_follow_sklearn(n, test_fraction):
  labels = np.arange(n) % 2
  train, test = splits.train_test_indices(labels, test_fraction, seed=0)
  assert len(test) == math.ceil(test_fraction * n)
  assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(n))


def test_matches_sklearn_stratified_split():
  labels = np.random.default_rng(0).integers(0, 3, 100)
  train, test = splits.train_test_indices(labels, 0.34, seed=42)
  ref_train, ref_test = train_test_split(
    np.arange(100), test_size=0.34, random_state=42, stratify=labels
  )
  assert np.array_equal(train, np.sort(ref_train))
  assert np.array_equal(test, np.sort(ref_test))


def test_stratified_class_shares():
  labels = np.repeat([0, 1, 2], [50, 30, 20])
  _, test = splits.train_test_indices(labels, 0.2, seed=5)
  assert np.bincount(labels[test]).tolist() == [10, 6, 4]


def test_singleton_class_falls_back_to_plain_split():
  labels = np.array([1] * 45 + [0])
  train, test = splits.train_test_indices(labels, 0.34, seed=0)
  ref_train, _ = train_test_split(np.arange(46), test_size=0.34, random_state=0)
  assert np.array_equal(train, np.sort(ref_train))
  assert len(test) == 16


def test_zero_fraction_keeps_all_for_training():
  train, test = splits.train_test_indices(np.zeros(5, int), 0.0, seed=0)
  assert train.tolist() == [0, 1, 2, 3, 4]
  assert test.size == 0


@pytest.mark.parametrize("test_fraction", [-0.1, 1.0, 1.5])
def test_invalid_fraction_raises(test_fraction):
  with pytest.raises(ValueError, match=f"test_fraction={test_fraction}"):
    splits.train_test_indices(np.zeros(5, int), test_fraction, seed=0)


def test_groups_stay_on_one_side():
  groups = np.repeat(np.arange(20), 3)
  labels = groups % 2
  train, test = splits.train_test_indices(labels, 0.25, seed=0, groups=groups)
  assert set(groups[train]).isdisjoint(groups[test])
  assert len(set(groups[test])) == 5
  assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(60))


def test_check_patient_ids_accepts_clean_split():
  splits.check_patient_ids(
    [np.array([1, 2]), np.array([5])],
    [np.array([3]), np.array([6, 7])],
    ["a", "b"],
  )


def test_patient_in_train_and_test_raises():
  with pytest.raises(ValueError, match="patient id 3 is in both"):
    splits.check_patient_ids([np.array([1, 3])], [np.array([3])], ["cleveland"])


def test_patient_in_two_clients_raises():
  with pytest.raises(ValueError, match="'a' and 'b'"):
    splits.check_patient_ids(
      [np.array([1]), np.array([2])],
      [np.array([9]), np.array([9])],
      ["a", "b"],
    )
