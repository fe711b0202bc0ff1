"""Closed-form leakage of a single example's gradient.

Two facts about the gradient of one example's cross-entropy let an attacker
read the example off without any optimization:

  * The output bias's gradient is `softmax(z) - onehot(y)` (for one logit,
    `sigmoid(z) - y`), so its sign gives the label (iDLG: B. Zhao,
    K. R. Mopuri, H. Bilen, "iDLG: Improved Deep Leakage from Gradients",
    2020, arXiv:2001.02610).
  * A dense layer `z = x @ W + b` has gradients `dW = outer(x, dz)` and
    `db = dz`, so its input is `dW[:, j] / db[j]` for any unit with
    `db[j] != 0`. For logistic regression with bias this recovers the whole
    record.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med.models.base import Model

PyTree = Any


def find_output_bias(
  model: Model,
  params: PyTree,
  feature_shape: Sequence[int],
  model_state: PyTree | None = None,
) -> int:
  """Returns the flat leaf index of the output layer's bias in `params`.

  The output bias is the one leaf whose Jacobian of the logits is the
  identity matrix, whatever the library calls it.

  Raises:
    ValueError: If no leaf, or more than one, has that property.
  """
  model_state = model_state or {}
  probe = jnp.linspace(-1.0, 1.0, int(np.prod(feature_shape)))
  probe = probe.reshape(1, *feature_shape)

  def logits_fn(p):
    logits, _ = model.apply({"params": p, **model_state}, probe, train=False)
    return logits[0]

  jacobian = jax.jacrev(logits_fn)(params)
  eye = np.eye(model.num_outputs)
  found = []
  for index, leaf in enumerate(jax.tree.leaves(jacobian)):
    leaf = np.asarray(leaf)
    if leaf.shape == eye.shape and np.allclose(leaf, eye):
      found.append(index)
  if len(found) != 1:
    raise ValueError(
      f"found {len(found)} parameter leaves whose Jacobian of the logits is "
      "the identity, expected exactly one output bias; pass the labels to "
      "invert_update instead."
    )
  return found[0]


def recover_label(
  output_bias_gradient: jax.Array,
) -> jax.Array:
  """Recovers the label of a single example from its output-bias gradient.

  Args:
    output_bias_gradient: `[num_outputs]`, the gradient of one example's
      cross-entropy (or any positive multiple of it) with respect to the
      output bias.

  Returns:
    The int32 label: for one logit, 1 when the gradient `sigmoid(z) - y` is
    negative, else 0. For several logits, the class whose entry of
    `softmax(z) - onehot(y)` is smallest (the only negative one).
  """
  if output_bias_gradient.shape[-1] == 1:
    return (output_bias_gradient[0] < 0).astype(jnp.int32)
  return jnp.argmin(output_bias_gradient).astype(jnp.int32)


def analytic_dense_inversion(
  kernel_gradient: jax.Array, bias_gradient: jax.Array
) -> jax.Array:
  """Solves a first dense layer's gradient for its single input record.

  Returns the least-squares solution over all units of `dW = outer(x, db)`,
  `x = dW @ db / (db @ db)`, which is exact for one example without noise.

  Args:
    kernel_gradient: `[num_features, num_units]`.
    bias_gradient: `[num_units]`.

  Returns:
    The record, `[num_features]`.
  """
  return kernel_gradient @ bias_gradient / jnp.sum(bias_gradient**2)
