"""Tests for writing and reading FederatedData as local TFDS datasets."""

import sys

import jax
import numpy as np
import pytest

from fedjax_med.data import partition, tfds_io
from fedjax_med.data.heart_disease import load_fed_heart_disease
from fedjax_med.data.sklearn_sources import load_digits_arrays


def assert_same_data(a, b):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b  # Also compares the static metadata.
  for x, y in zip(leaves_a, leaves_b, strict=True):
    assert x.dtype == y.dtype
    assert x.shape == y.shape
    assert np.array_equal(x, y)


@pytest.fixture(scope="module")
def heart():
  return load_fed_heart_disease()


@pytest.fixture(scope="module")
def heart_dir(tmp_path_factory, heart):
  data_dir = tmp_path_factory.mktemp("tfds")
  tfds_io.write_tfds(heart, data_dir)
  return data_dir


def test_heart_round_trip(heart, heart_dir):
  assert_same_data(
    tfds_io.read_tfds(heart_dir, name="fed_heart_disease"), heart
  )


def test_heart_splits_readable_by_name(heart_dir):
  import tensorflow_datasets as tfds

  source = tfds.data_source(
    "federated_arrays/fed_heart_disease",
    split="va_long_beach_test",
    data_dir=str(heart_dir),
  )
  assert len(source) == 45
  assert source[0]["x"].shape == (13,)


def test_digits_images_round_trip(tmp_path):
  source = load_digits_arrays(as_images=True)
  parts = partition.dirichlet_partition(source.y, 5, 0.5, seed=0)
  # One single-example client, whose test split is empty.
  parts[4] = parts[4][:1]
  keep = np.concatenate(parts)
  x, y = source.x[keep], source.y[keep]
  offsets = np.cumsum([0] + [len(p) for p in parts])
  local_parts = [np.arange(offsets[k], offsets[k + 1]) for k in range(5)]
  data = partition.federate(
    x,
    y,
    local_parts,
    num_classes=10,
    test_fraction=0.2,
    seed=0,
    name="digits",
  )
  assert data.test.num_examples[4] == 0

  path = tfds_io.write_tfds(data, tmp_path)
  assert path.endswith("federated_arrays/digits/1.0.0")
  assert_same_data(tfds_io.read_tfds(tmp_path), data)


def test_extra_padding_kept(tmp_path, heart):
  padded = heart.replace(
    train=heart.train.replace(
      x=np.pad(heart.train.x, ((0, 0), (0, 3), (0, 0))),
      y=np.pad(heart.train.y, ((0, 0), (0, 3))),
      mask=np.pad(heart.train.mask, ((0, 0), (0, 3))),
    ),
    name="padded",
  )
  tfds_io.write_tfds(padded, tmp_path)
  assert_same_data(tfds_io.read_tfds(tmp_path, name="padded"), padded)


def test_existing_dataset_not_overwritten(heart, heart_dir):
  with pytest.raises(FileExistsError, match="overwrite=True"):
    tfds_io.write_tfds(heart, heart_dir)


def test_overwrite_replaces_dataset(tmp_path, heart):
  tfds_io.write_tfds(heart.replace(name="heart"), tmp_path)
  relabeled = heart.replace(
    name="heart",
    test=heart.test.replace(y=np.where(heart.test.mask, 1 - heart.test.y, 0)),
  )
  tfds_io.write_tfds(relabeled, tmp_path, overwrite=True)
  assert_same_data(tfds_io.read_tfds(tmp_path), relabeled)


def test_missing_data_dir_names_path(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(FileNotFoundError, match="nowhere"):
    tfds_io.read_tfds(missing)


def test_empty_data_dir_raises(tmp_path):
  with pytest.raises(FileNotFoundError, match="no datasets written"):
    tfds_io.read_tfds(tmp_path)


def test_several_datasets_need_name(tmp_path, heart):
  tfds_io.write_tfds(heart.replace(name="first"), tmp_path)
  tfds_io.write_tfds(heart.replace(name="second"), tmp_path)
  with pytest.raises(ValueError, match=r"\['first', 'second'\]"):
    tfds_io.read_tfds(tmp_path)
  assert tfds_io.read_tfds(tmp_path, name="second").name == "second"


def test_unknown_name_lists_datasets(heart_dir):
  with pytest.raises(FileNotFoundError, match="fed_heart_disease"):
    tfds_io.read_tfds(heart_dir, name="other")


def test_invalid_dataset_name_rejected(tmp_path, heart):
  with pytest.raises(ValueError, match="cannot name a TFDS config"):
    tfds_io.write_tfds(heart.replace(name="fed heart"), tmp_path)


def test_missing_tfds_import_error(monkeypatch, tmp_path, heart):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ImportError, match=r"pip install -e '\.\[tfds\]'"):
    tfds_io.write_tfds(heart, tmp_path)


def test_split_names_unique():
  names = tfds_io.split_names(("VA Long Beach", "va-long beach", "", "A"))
  assert names == ["va_long_beach", "va_long_beach_1", "client_2", "a"]
