"""Evaluation of global or per-client models on every client's test split.

Predictions are computed in one compiled, vmapped call over the client axis;
the metrics are then computed on the host from the real rows only. They are
accuracy, balanced accuracy, AUROC, calibration and loss, plus the long-tail
metrics when tail classes are given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from fedjax_med import losses
from fedjax_med.data.federated_data import ClientArrays
from fedjax_med.metrics.classification import evaluate_clients
from fedjax_med.metrics.long_tail import evaluate_long_tail
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
  tail_classes: Sequence[int] | None = None,
) -> dict:
  """Evaluates `variables` on a split of every client.

  Args:
    predict_fn: From `make_predict_fn`.
    variables: The model variables.
    split: The clients' rows.
    client_names: One name per client.
    tail_classes: If given, the long-tail metrics of
      `fedjax_med.metrics.long_tail` with these tail classes are added.

  Returns:
    The dict of `evaluate_clients`: "per_client", "pooled", "client_mean",
    "example_weighted" and "worst_client", plus "long_tail" (the dict of
    `evaluate_long_tail`) when `tail_classes` is given.
  """
  probs = np.asarray(jax.device_get(predict_fn(variables, split.x)))
  labels = np.asarray(split.y)
  mask = np.asarray(split.mask)
  result = evaluate_clients(probs, labels, mask, client_names)
  if tail_classes is not None:
    result["long_tail"] = evaluate_long_tail(
      probs, labels, mask, client_names, tail_classes
    )
  return result
