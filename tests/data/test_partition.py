"""Tests for the client partitioners and `federate`."""

import logging
import time

import numpy as np
import pytest

from fedjax_med.data import partition

# Ten classes of 100 examples each, the usual label-skew stress case.
LABELS = np.repeat(np.arange(10), 100)


def assert_valid_partition(parts, num_examples):
  sizes = [len(p) for p in parts]
  assert min(sizes) >= 1, f"empty client in sizes {sizes}"
  union = np.concatenate(parts)
  assert union.size == num_examples, "partitions overlap or miss examples"
  assert np.array_equal(np.sort(union), np.arange(num_examples))
  for p in parts:
    assert p.dtype == np.int64
    assert np.all(np.diff(p) > 0), "indices must be sorted and unique"


@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.0])
def test_dirichlet_valid_for_100_seeds(alpha):
  for seed in range(100):
    parts = partition.dirichlet_partition(LABELS, 20, alpha, seed)
    assert len(parts) == 20
    assert_valid_partition(parts, LABELS.size)
    again = partition.dirichlet_partition(LABELS, 20, alpha, seed)
    for a, b in zip(parts, again, strict=True):
      assert np.array_equal(a, b), f"seed {seed} is not deterministic"


def test_dirichlet_min_size_met_or_raises():
  start = time.perf_counter()
  successes = 0
  for seed in range(100):
    try:
      parts = partition.dirichlet_partition(
        LABELS, 20, 0.1, seed, min_partition_size=10
      )
    except ValueError as e:
      assert "alpha=0.1" in str(e)
      assert "min_partition_size=10" in str(e)
      continue
    successes += 1
    assert min(len(p) for p in parts) >= 10
    assert_valid_partition(parts, LABELS.size)
  assert successes > 0
  assert time.perf_counter() - start < 10.0


def test_dirichlet_exhausted_retries_raise():
  with pytest.raises(ValueError, match="max_retries") as info:
    partition.dirichlet_partition(
      LABELS, 20, 0.01, 0, min_partition_size=45, max_retries=5
    )
  assert "alpha=0.01" in str(info.value)
  assert "min_partition_size=45" in str(info.value)


def label_entropy(parts, labels):
  entropies = []
  for p in parts:
    counts = np.bincount(labels[p], minlength=10) / len(p)
    counts = counts[counts > 0]
    entropies.append(-np.sum(counts * np.log(counts)))
  return float(np.mean(entropies))


def test_dirichlet_skew_grows_as_alpha_shrinks():
  skewed = [
    label_entropy(partition.dirichlet_partition(LABELS, 10, 0.1, s), LABELS)
    for s in range(10)
  ]
  near_iid = [
    label_entropy(partition.dirichlet_partition(LABELS, 10, 100.0, s), LABELS)
    for s in range(10)
  ]
  # Ten equally likely classes have entropy log(10) = 2.30.
  assert np.mean(near_iid) > 2.2
  assert np.mean(skewed) < 1.2


def test_iid_sizes_balanced_and_seeded():
  parts = partition.iid_partition(103, 10, seed=3)
  assert_valid_partition(parts, 103)
  sizes = [len(p) for p in parts]
  assert max(sizes) - min(sizes) <= 1
  same = partition.iid_partition(103, 10, seed=3)
  other = partition.iid_partition(103, 10, seed=4)
  assert all(np.array_equal(a, b) for a, b in zip(parts, same, strict=True))
  assert not all(
    np.array_equal(a, b) for a, b in zip(parts, other, strict=True)
  )


@pytest.mark.parametrize("alpha", [0.1, 1.0, 10.0])
def test_quantity_skew_valid(alpha):
  for seed in range(20):
    parts = partition.quantity_skew_partition(
      500, 10, alpha, seed, min_partition_size=5
    )
    assert_valid_partition(parts, 500)
    assert min(len(p) for p in parts) >= 5
    again = partition.quantity_skew_partition(
      500, 10, alpha, seed, min_partition_size=5
    )
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_quantity_skew_spread_grows_as_alpha_shrinks():
  def size_spread(alpha):
    spreads = []
    for seed in range(20):
      sizes = [
        len(p) for p in partition.quantity_skew_partition(1000, 10, alpha, seed)
      ]
      spreads.append(np.std(sizes) / np.mean(sizes))
    return np.mean(spreads)

  assert size_spread(0.1) > 3 * size_spread(10.0)


def test_quantity_skew_exact_minimum():
  parts = partition.quantity_skew_partition(20, 4, 0.5, 0, min_partition_size=5)
  assert [len(p) for p in parts] == [5, 5, 5, 5]


def test_natural_partition_first_appearance_order():
  sites = np.array(["b", "a", "b", "c", "a", "b"])
  parts, names = partition.natural_partition(sites)
  assert names == ("b", "a", "c")
  assert [p.tolist() for p in parts] == [[0, 2, 5], [1, 4], [3]]


def test_natural_partition_integer_sites():
  parts, names = partition.natural_partition([7, 3, 7])
  assert names == ("7", "3")
  assert [p.tolist() for p in parts] == [[0, 2], [1]]


@pytest.mark.parametrize(
  "call",
  [
    lambda: partition.iid_partition(5, 6, 0),
    lambda: partition.iid_partition(5, 0, 0),
    lambda: partition.dirichlet_partition(LABELS, 20, 0.0, 0),
    lambda: partition.dirichlet_partition(LABELS, 20, -1.0, 0),
    lambda: partition.dirichlet_partition(LABELS, 20, float("nan"), 0),
    lambda: partition.dirichlet_partition(LABELS, 20, float("inf"), 0),
    lambda: partition.dirichlet_partition(LABELS, 1001, 1.0, 0),
    lambda: partition.dirichlet_partition(
      LABELS, 20, 1.0, 0, min_partition_size=51
    ),
    lambda: partition.dirichlet_partition(LABELS, 20, 1.0, 0, max_retries=0),
    lambda: partition.dirichlet_partition(LABELS * 0.5, 20, 1.0, 0),
    lambda: partition.dirichlet_partition(LABELS.reshape(10, 100), 5, 1.0, 0),
    lambda: partition.quantity_skew_partition(10, 3, 0.0, 0),
    lambda: partition.quantity_skew_partition(10, 3, 1.0, 0, 4),
    lambda: partition.natural_partition([]),
  ],
)
def test_impossible_requests_raise(call):
  with pytest.raises(ValueError):
    call()


def test_too_many_clients_message():
  with pytest.raises(ValueError, match="num_clients=6") as info:
    partition.iid_partition(5, 6, 0)
  assert "only 5" in str(info.value)


def test_partition_summary_counts():
  labels = np.array([0, 1, 1, 2, 2, 2])
  parts = [np.array([0, 1]), np.array([2, 3, 4, 5])]
  text = partition.partition_summary(parts, labels, 3, ["north", "south"])
  lines = text.splitlines()
  assert len(lines) == 3
  assert lines[1].split() == ["north", "2", "1", "1", "0"]
  assert lines[2].split() == ["south", "4", "0", "1", "3"]


def test_partitioners_log_summary(caplog):
  # absl logs through the "absl" logger, whose level another test in the same
  # process may have raised (benchmark scripts set it to WARNING).
  caplog.set_level(logging.INFO)
  caplog.set_level(logging.INFO, logger="absl")
  partition.dirichlet_partition(LABELS, 4, 1.0, 0)
  expected = partition.partition_summary(
    partition.dirichlet_partition(LABELS, 4, 1.0, 0), LABELS
  )
  assert expected in caplog.text


def make_pooled(num_examples=200, num_classes=4, seed=0):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, num_classes, num_examples).astype(np.int32)
  x = np.stack([np.arange(num_examples), y], axis=1).astype(np.float32)
  return x, y


def test_federate_keeps_every_example_once():
  x, y = make_pooled()
  parts = partition.iid_partition(200, 5, 0)
  data = partition.federate(
    x, y, parts, num_classes=4, test_fraction=0.25, seed=0, name="toy"
  )
  assert data.num_clients == 5
  assert data.name == "toy"
  for k, part in enumerate(parts):
    train_x, train_y = data.train.client(k)
    test_x, test_y = data.test.client(k)
    rows = np.concatenate([train_x[:, 0], test_x[:, 0]]).astype(int)
    assert np.array_equal(np.sort(rows), part)
    assert len(test_y) == int(np.ceil(0.25 * len(part)))
    assert np.array_equal(train_y, y[train_x[:, 0].astype(int)])


def test_federate_stratifies_clients():
  y = np.repeat([0, 1], [80, 20]).astype(np.int32)
  x = np.arange(100, dtype=np.float32)[:, None]
  data = partition.federate(
    x, y, [np.arange(100)], num_classes=2, test_fraction=0.3, seed=1
  )
  _, test_y = data.test.client(0)
  assert np.bincount(test_y).tolist() == [24, 6]


def test_federate_singleton_client_train_only():
  x, y = make_pooled(11)
  parts = [np.arange(10), np.array([10])]
  data = partition.federate(
    x, y, parts, num_classes=4, test_fraction=0.3, seed=0
  )
  assert data.train.num_examples.tolist() == [7, 1]
  assert data.test.num_examples.tolist() == [3, 0]


def test_federate_rejects_overlapping_partitions():
  x, y = make_pooled(10)
  with pytest.raises(ValueError, match="example 4 is in client 0"):
    partition.federate(
      x,
      y,
      [np.arange(5), np.arange(4, 10)],
      num_classes=4,
      test_fraction=0.2,
      seed=0,
    )


def test_federate_no_patient_in_train_and_test():
  # 60 patients with 1 to 5 records each, spread over three clients. The
  # first feature stores the patient id, so the split can be read back.
  rng = np.random.default_rng(0)
  patients = np.repeat(np.arange(60), rng.integers(1, 6, 60))
  y = (patients % 2).astype(np.int32)
  x = patients[:, None].astype(np.float32)
  parts = [np.flatnonzero(patients % 3 == k) for k in range(3)]
  data = partition.federate(
    x,
    y,
    parts,
    num_classes=2,
    test_fraction=0.3,
    seed=0,
    patient_ids=patients,
  )
  train_patients = set(data.train.pooled()[0][:, 0].astype(int).tolist())
  test_patients = set(data.test.pooled()[0][:, 0].astype(int).tolist())
  assert train_patients.isdisjoint(test_patients)
  assert train_patients | test_patients == set(range(60))
  assert len(test_patients) > 0


def test_federate_patient_in_two_clients_raises():
  x, y = make_pooled(10)
  patients = np.arange(10)
  patients[7] = 2  # Patient 2 also has a record in the second client.
  with pytest.raises(ValueError, match="patient id 2 appears in clients"):
    partition.federate(
      x,
      y,
      [np.arange(5), np.arange(5, 10)],
      num_classes=4,
      test_fraction=0.2,
      seed=0,
      patient_ids=patients,
    )
