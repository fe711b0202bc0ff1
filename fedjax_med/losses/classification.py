"""Classification losses on masked batches.

Binary tasks carry one logit per example (the log-odds of class 1) and use
sigmoid cross-entropy; tasks with more classes use softmax cross-entropy.
Padding rows are excluded through a mask, and a batch with no real rows has
loss 0 rather than NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example cross-entropy.

  Args:
    logits: `[batch, 1]` for a binary task, else `[batch, num_classes]`.
    labels: `[batch]` integer labels.

  Returns:
    `[batch]` losses.
  """
  if logits.shape[-1] == 1:
    return optax.sigmoid_binary_cross_entropy(
      logits[..., 0], labels.astype(logits.dtype)
    )
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `values` over rows where `mask`; 0 when no row is real."""
  mask = mask.astype(values.dtype)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def probabilities(logits: jax.Array) -> jax.Array:
  """Class probabilities `[batch, num_classes]`, two columns when binary."""
  if logits.shape[-1] == 1:
    p1 = jax.nn.sigmoid(logits[..., 0])
    return jnp.stack([1.0 - p1, p1], axis=-1)
  return jax.nn.softmax(logits, axis=-1)
