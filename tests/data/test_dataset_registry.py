"""Tests for `load_dataset`."""

import numpy as np
import pytest

import fedjax_med.data as data_lib
from fedjax_med.data import registry, tfds_io


def test_names():
  assert data_lib.DATASET_NAMES == (
    "fed_heart_disease",
    "fed_heart_disease_text",
    "breast_cancer",
    "digits",
    "tfds",
    "digits_long_tail",
    "digits_multidomain",
    "digits_embeddings",
  )


def test_unknown_name_lists_known():
  with pytest.raises(ValueError, match="fed_heart_disease") as info:
    registry.load_dataset("mnist")
  assert "'mnist'" in str(info.value)


def test_unknown_option_raises():
  with pytest.raises(ValueError, match=r"\['clients'\]"):
    registry.load_dataset("digits", clients=3)


def test_missing_required_option_raises():
  with pytest.raises(ValueError, match="data_dir"):
    registry.load_dataset("tfds")


def test_heart_options_forwarded():
  data = registry.load_dataset("fed_heart_disease", target="severity")
  assert data.num_clients == 4
  assert data.num_classes == 5


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "quantity"])
def test_breast_cancer_partitions(partition):
  data = registry.load_dataset(
    "breast_cancer", partition=partition, num_clients=6, seed=1
  )
  assert data.num_clients == 6
  assert data.name == "breast_cancer"
  sizes = data.train.num_examples + data.test.num_examples
  assert int(sizes.sum()) == 569
  assert int(sizes.min()) >= 10
  if partition == "iid":
    assert int(sizes.max() - sizes.min()) <= 1
  x, _ = data.train.pooled()
  np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-4)
  np.testing.assert_allclose(x.std(axis=0), 1.0, atol=1e-4)


def test_breast_cancer_raw_features():
  data = registry.load_dataset("breast_cancer", standardize=False)
  assert float(data.train.x.max()) > 1000.0


def test_digits_shapes():
  images = registry.load_dataset("digits", num_clients=4)
  flat = registry.load_dataset("digits", num_clients=4, as_images=False)
  assert images.feature_shape == (8, 8, 1)
  assert flat.feature_shape == (64,)
  assert images.num_classes == 10
  assert np.array_equal(
    images.train.x.reshape(*images.train.x.shape[:2], 64), flat.train.x
  )


def test_invalid_partition_raises():
  with pytest.raises(ValueError, match="partition='pathological'"):
    registry.load_dataset("digits", partition="pathological")


def test_tfds_round_trip(tmp_path):
  written = registry.load_dataset("breast_cancer", num_clients=3)
  tfds_io.write_tfds(written, tmp_path)
  read = registry.load_dataset(
    "tfds", data_dir=tmp_path, tfds_name="breast_cancer"
  )
  assert read.client_names == written.client_names
  assert np.array_equal(read.train.x, written.train.x)
  assert np.array_equal(read.test.y, written.test.y)
