"""Pooled datasets bundled with scikit-learn, for synthetic client splits.

Neither dataset has sites, so clients come from a partitioner (IID,
Dirichlet label skew or quantity skew). Both load from files inside the
scikit-learn wheel, without a download.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from sklearn import datasets


class ArraySource(NamedTuple):
  """A pooled dataset as arrays.

  Attributes:
    x: Features, shape `[num_examples, *feature_shape]`, float32.
    y: Labels, shape `[num_examples]`, int32 in `[0, num_classes)`.
    num_classes: Number of label classes.
    feature_names: One name per feature column, empty for images.
  """

  x: np.ndarray
  y: np.ndarray
  num_classes: int
  feature_names: tuple[str, ...]


def load_breast_cancer_arrays() -> ArraySource:
  """Loads Breast Cancer Wisconsin (Diagnostic): 569 tumours, 30 features.

  Labels follow scikit-learn: 0 = malignant (212), 1 = benign (357). The
  features are raw measurements on very different scales (area reaches
  about 2500), so standardize them before training.
  """
  bunch = datasets.load_breast_cancer()
  return ArraySource(
    x=bunch.data.astype(np.float32),
    y=bunch.target.astype(np.int32),
    num_classes=2,
    feature_names=tuple(str(n) for n in bunch.feature_names),
  )


def load_digits_arrays(as_images: bool) -> ArraySource:
  """Loads the 1797 handwritten 8x8 digits (UCI optdigits test set), 10 classes.

  Pixel counts 0..16 are divided by 16, so every value lies in [0, 1].

  Args:
    as_images: If True, features have shape `[1797, 8, 8, 1]` (height,
      width, channel) and no feature names. Otherwise `[1797, 64]` with
      scikit-learn's names `pixel_<row>_<col>`.
  """
  bunch = datasets.load_digits()
  x = (bunch.data / 16.0).astype(np.float32)
  feature_names = tuple(str(n) for n in bunch.feature_names)
  if as_images:
    x = x.reshape(-1, 8, 8, 1)
    feature_names = ()
  return ArraySource(
    x=x,
    y=bunch.target.astype(np.int32),
    num_classes=10,
    feature_names=feature_names,
  )
