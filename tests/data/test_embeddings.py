"""The digits embeddings: a public split trains the frozen encoder."""

import numpy as np

from fedjax_med.data import embeddings, registry
from fedjax_med.data.sklearn_sources import load_digits_arrays


def test_public_split_is_disjoint_and_stratified():
  labels = load_digits_arrays(as_images=False).y
  public, private = embeddings.public_split(labels, 0.3, seed=0)
  assert np.intersect1d(public, private).size == 0
  assert np.union1d(public, private).size == labels.size
  for label in range(10):
    share = np.mean(labels[public] == label) / np.mean(labels == label)
    assert abs(share - 1.0) < 0.05


def test_federation_holds_only_private_rows():
  data = registry.load_dataset(
    "digits_embeddings", encoder_steps=5, embedding_dim=8
  )
  labels = load_digits_arrays(as_images=False).y
  _, private = embeddings.public_split(labels, 0.3, seed=0)
  total = int(data.train.num_examples.sum() + data.test.num_examples.sum())
  assert total == private.size
  assert data.feature_shape == (8,)
  assert data.num_clients == 10
