"""Tests for the scikit-learn array sources."""

import numpy as np

from fedjax_med.data import sklearn_sources


def test_breast_cancer_arrays():
  source = sklearn_sources.load_breast_cancer_arrays()
  assert source.x.shape == (569, 30)
  assert source.x.dtype == np.float32
  assert source.y.dtype == np.int32
  assert np.bincount(source.y).tolist() == [212, 357]
  assert source.num_classes == 2
  assert len(source.feature_names) == 30
  assert source.feature_names[0] == "mean radius"


def test_digits_images_and_flat_agree():
  images = sklearn_sources.load_digits_arrays(as_images=True)
  flat = sklearn_sources.load_digits_arrays(as_images=False)
  assert images.x.shape == (1797, 8, 8, 1)
  assert flat.x.shape == (1797, 64)
  assert images.x.dtype == np.float32
  assert np.array_equal(images.x.reshape(1797, 64), flat.x)
  assert images.x.min() == 0.0
  assert images.x.max() == 1.0
  assert images.feature_names == ()
  assert len(flat.feature_names) == 64
  assert images.num_classes == 10
  assert np.array_equal(np.unique(images.y), np.arange(10))
