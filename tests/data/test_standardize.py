"""Tests for federated standardization from sufficient statistics."""

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from fedjax_med.data import standardize
from fedjax_med.data.federated_data import FederatedData


def make_clients(seed=0):
  rng = np.random.default_rng(seed)
  return [
    rng.normal(loc=100.0 * k, scale=k + 1.0, size=(n, 3))
    for k, n in enumerate([5, 40, 17])
  ]


def test_aggregate_matches_pooled_scaler():
  clients = make_clients()
  mean, std = standardize.aggregate_feature_statistics(
    [standardize.feature_statistics(x) for x in clients]
  )
  scaler = StandardScaler().fit(np.concatenate(clients))
  np.testing.assert_allclose(mean, scaler.mean_, rtol=1e-12)
  np.testing.assert_allclose(std, scaler.scale_, rtol=1e-9)


def test_constant_feature_gets_unit_std():
  x = np.array([[3.0, 1.0], [3.0, 2.0]])
  mean, std = standardize.aggregate_feature_statistics(
    [standardize.feature_statistics(x)]
  )
  assert std[0] == 1.0
  assert mean[0] == 3.0


def test_raw_rows_rejected():
  with pytest.raises(TypeError, match="feature_statistics"):
    standardize.aggregate_feature_statistics([np.ones((3, 2))])


def test_no_examples_rejected():
  empty = standardize.feature_statistics(np.zeros((0, 2)))
  with pytest.raises(ValueError, match="no examples"):
    standardize.aggregate_feature_statistics([empty])


def test_standardize_clients_uses_train_statistics():
  clients = make_clients()
  train = [(x[:-2], np.zeros(len(x) - 2, int)) for x in clients]
  test = [(x[-2:] * 2.0, np.zeros(2, int)) for x in clients]
  data = FederatedData.from_clients(train, test, num_classes=2)
  result = standardize.standardize_clients(data)

  scaler = StandardScaler().fit(data.train.pooled()[0].astype(np.float64))
  np.testing.assert_allclose(
    result.train.pooled()[0],
    scaler.transform(data.train.pooled()[0]),
    atol=1e-5,
  )
  np.testing.assert_allclose(
    result.test.pooled()[0], scaler.transform(data.test.pooled()[0]), atol=1e-5
  )
  assert result.train.x.shape == data.train.x.shape
  assert not np.any(result.train.x[~result.train.mask])
  assert np.array_equal(result.train.y, data.train.y)
