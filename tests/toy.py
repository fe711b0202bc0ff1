"""Small models and datasets with closed-form local training, for tests."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from fedjax_med.data.federated_data import FederatedData
from fedjax_med.models.base import from_flax


class ScalarModel(nn.Module):
  """Outputs one trainable scalar `w` for every example."""

  @nn.compact
  def __call__(self, x, train=False):
    w = self.param("w", nn.initializers.zeros, ())
    return jnp.broadcast_to(w, (x.shape[0], 1))


def squared_error(logits, labels):
  """`(w - y)^2`, i.e. `0.5 * a * (w - b)^2` with curvature a = 2."""
  return (logits[:, 0] - labels.astype(logits.dtype)) ** 2


def scalar_model():
  return from_flax(ScalarModel(), num_outputs=1)


def quadratic_data(targets, sizes) -> FederatedData:
  """Client k holds `sizes[k]` rows whose label is the target `targets[k]`."""
  clients = [
    (np.zeros((n, 1), np.float32), np.full((n,), b, np.int32))
    for b, n in zip(targets, sizes, strict=True)
  ]
  return FederatedData.from_clients(
    clients, clients, num_classes=max(targets) + 1, name="quadratic"
  )


class LogisticRegression(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(1)(x)


def logistic_model():
  return from_flax(LogisticRegression(), num_outputs=1)


def random_binary_data(sizes, num_features=5, seed=0) -> FederatedData:
  rng = np.random.default_rng(seed)
  true_w = rng.normal(size=num_features)
  clients = []
  for n in sizes:
    x = rng.normal(size=(n, num_features)).astype(np.float32)
    y = (x @ true_w + 0.5 * rng.normal(size=n) > 0).astype(np.int32)
    clients.append((x, y))
  return FederatedData.from_clients(
    clients, clients, num_classes=2, name="random_binary"
  )
