"""Alignment losses between a batch and its augmented views (FedAlign).

The formulas follow FedAlign's released code (github.com/sunnyinAI/FedALign;
S. Gupta, V. Sutar, V. Singh, A. Sethi, CVPR 2025 Workshops,
arXiv:2501.15486). Every function takes a boolean `mask [batch]` marking the
real rows. Padding rows change no value or gradient, and a batch without a
real row gives 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from fedjax_med.losses.classification import masked_mean

# Floor of the mixture probability, as in the released code.
PROBABILITY_FLOOR = 1e-7
# Keeps `q log q` and its gradient finite where a probability underflows to 0.
_LOG_FLOOR = 1e-30
# Stands in for -inf where a similarity is masked out, so that a row without
# any candidate stays finite.
_MASKED_LOGIT = -1e30
# Lower bound on a row's norm, as in PyTorch's `F.normalize`.
_NORM_EPSILON = 1e-12


def representation_mse(
  features: jax.Array, reference: jax.Array, mask: jax.Array
) -> jax.Array:
  """Returns the mean squared difference over real rows and all dimensions.

  Args:
    features: `[batch, dim]`.
    reference: `[batch, dim]`.
    mask: `[batch]` bool.
  """
  return masked_mean(jnp.mean((features - reference) ** 2, axis=-1), mask)


def jensen_shannon(
  probabilities: Sequence[jax.Array], mask: jax.Array
) -> jax.Array:
  """Returns the generalized Jensen-Shannon divergence of several predictions.

  With `M = clip(mean_k P_k, 1e-7, 1)`, the value is `mean_k KL(P_k || M)`,
  averaged over the real rows. It is 0 when all predictions are equal.

  Args:
    probabilities: Class probabilities, each `[batch, num_classes]`.
    mask: `[batch]` bool.
  """
  stacked = jnp.stack(probabilities)
  log_mixture = jnp.log(
    jnp.clip(jnp.mean(stacked, axis=0), PROBABILITY_FLOOR, 1.0)
  )
  log_q = jnp.log(jnp.maximum(stacked, _LOG_FLOOR))
  divergences = jnp.sum(stacked * (log_q - log_mixture), axis=-1)
  return masked_mean(jnp.mean(divergences, axis=0), mask)


def supervised_contrastive(
  augmented: jax.Array,
  features: jax.Array,
  labels: jax.Array,
  mask: jax.Array,
  temperature: float,
  standard: bool = False,
) -> jax.Array:
  """Returns the supervised contrastive loss over `[augmented; features]`.

  Rows of `Z = [augmented; features]` (`2 * batch` rows, labels repeated)
  are L2-normalized and `S = Z Z^T / temperature`. Anchor `i` scores
  `-mean_{j in P(i)} S_ij + log sum_{j != i} exp(S_ij)`, where `P(i)`
  contains the rows with `i`'s label. FedAlign's code includes `j = i` in
  `P(i)`, and `standard=True` excludes it, as in Khosla et al.,
  "Supervised Contrastive Learning", NeurIPS 2020, arXiv:2004.11362.
  Anchors with an empty `P(i)` or no other real row are left out of the
  mean.

  Args:
    augmented: `[batch, dim]` features of the augmented view.
    features: `[batch, dim]` features of the original batch.
    labels: `[batch]` int labels.
    mask: `[batch]` bool.
    temperature: Softmax temperature, > 0.
    standard: Whether to exclude each anchor from its own positives.
  """
  z = jnp.concatenate([augmented, features])
  norms = jnp.linalg.norm(z, axis=-1, keepdims=True)
  z = z / jnp.maximum(norms, _NORM_EPSILON)
  y = jnp.concatenate([labels, labels])
  real = jnp.concatenate([mask, mask])
  similarity = z @ z.T / temperature

  not_self = ~jnp.eye(y.shape[0], dtype=bool)
  positives = (y[:, None] == y[None, :]) & real[None, :]
  if standard:
    positives = positives & not_self
  num_positives = jnp.sum(positives, axis=1)
  positive = jnp.sum(jnp.where(positives, similarity, 0.0), axis=1)
  positive = positive / jnp.maximum(num_positives, 1)

  candidates = not_self & real[None, :]
  negative = jax.nn.logsumexp(
    jnp.where(candidates, similarity, _MASKED_LOGIT), axis=1
  )
  anchors = real & (num_positives > 0) & jnp.any(candidates, axis=1)
  per_anchor = jnp.where(anchors, negative - positive, 0.0)
  return masked_mean(per_anchor, anchors)
