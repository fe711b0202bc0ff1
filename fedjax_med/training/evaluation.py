"""Evaluation of global or per-client models on every client's test split.

Predictions are computed in one compiled, vmapped call over the client axis;
the metrics (accuracy, balanced accuracy, AUROC, calibration, loss) are then
computed on the host from the real rows only.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from fedjax_med import losses
from fedjax_med.data.federated_data import ClientArrays
from fedjax_med.metrics.classification import evaluate_clients
from fedjax_med.models.base import Model


def make_predict_fn(model: Model, per_client_variables: bool = False):
  """Returns a jitted `(variables, x) -> probabilities`.

  Args:
    model: The network.
    per_client_variables: If True, `variables` carries a leading client
      axis and client `k` is evaluated with its own row.

  The returned function maps `x` of shape `[num_clients, max_examples,
  *feature_shape]` to probabilities `[num_clients, max_examples,
  num_classes]`.
  """

  def predict_one(variables, x):
    logits, _ = model.apply(variables, x, train=False)
    return losses.probabilities(logits)

  in_axes = (0 if per_client_variables else None, 0)
  return jax.jit(jax.vmap(predict_one, in_axes=in_axes))


def evaluate(
  predict_fn,
  variables: Any,
  split: ClientArrays,
  client_names: tuple[str, ...],
) -> dict:
  """Evaluates `variables` on a split of every client.

  Returns:
    The dict of `evaluate_clients`: "per_client", "pooled", "client_mean",
    "example_weighted" and "worst_client".
  """
  probs = np.asarray(jax.device_get(predict_fn(variables, split.x)))
  return evaluate_clients(
    probs, np.asarray(split.y), np.asarray(split.mask), client_names
  )
