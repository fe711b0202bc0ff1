"""Regularizers on a batch's representations: FedUV's and MOON's terms.

References:
  * H. Son, J. Kim, H. Chung, Y. Huang, B. Liu, "FedUV: Uniformity and
    Variance for Heterogeneous Federated Learning", CVPR 2024,
    arXiv:2402.18372; reference code github.com/sonhamin/FedUV
    (`algs/feduv.py`), from which the formulas below are taken.
  * Q. Li, B. He, D. Song, "Model-Contrastive Federated Learning", CVPR
    2021, arXiv:2103.16257.

Every function takes a batch with a leading example axis and a boolean
`mask [batch]` that marks the real rows. Padding rows never change a value
or a gradient, and a batch whose statistic is undefined (fewer than 2 real
rows for the variance and uniformity terms, no real row for the contrastive
term) gives 0 with finite gradients.

Choices:
  * The standard deviations are unbiased (divide by `n - 1`), as PyTorch's
    `std` in FedUV's code, and computed as `sqrt(var + epsilon)` with
    `epsilon = 1e-4` (VICReg's value). FedUV's code uses no epsilon. Without
    one the gradient is infinite for a column whose values are all equal.
  * The uniformity bandwidth is the lower median of the nonzero squared
    distances, the value `torch.median` returns for an even count, and it
    is a constant for differentiation by default (FedUV's code lets the
    gradient flow through it). With no nonzero distance every pair's
    potential is `exp(0) = 1` for any bandwidth, and the bandwidth is set
    to 1.
  * Pairwise distances are computed from the differences `z_i - z_j`, not
    from a Gram matrix, so identical rows have distance exactly 0 and are
    left out of the median as in `torch.pdist`. This needs `batch^2 *
    feature_dim` memory per client.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fedjax_med.losses.classification import masked_mean

# Added to the variance under the square root, as in VICReg (Bardes, Ponce,
# LeCun, ICLR 2022, arXiv:2105.04906).
STD_EPSILON = 1e-4
# Lower bound on a vector's norm in the cosine similarity, as in PyTorch's
# `CosineSimilarity`.
_COSINE_EPSILON = 1e-8


def std_hinge(
  values: jax.Array,
  mask: jax.Array,
  target: float | jax.Array,
  epsilon: float = STD_EPSILON,
) -> jax.Array:
  """Returns `mean_d max(0, target - std_d)` over the columns of `values`.

  Args:
    values: `[batch, dim]`.
    mask: `[batch]` bool, True for real rows.
    target: The standard deviation below which a column is penalized.
    epsilon: Added to each column's variance before the square root.

  Returns:
    A scalar; 0 when fewer than 2 rows are real.
  """
  rows = mask[:, None]
  count = jnp.sum(mask.astype(values.dtype))
  values = jnp.where(rows, values, 0.0)
  mean = jnp.sum(values, axis=0) / jnp.maximum(count, 1.0)
  centered = jnp.where(rows, values - mean, 0.0)
  variance = jnp.sum(centered**2, axis=0) / jnp.maximum(count - 1.0, 1.0)
  defined = count >= 2
  # The second `where` keeps the square root's gradient finite when the
  # statistic is undefined and epsilon is 0.
  variance = jnp.where(defined, variance, 1.0)
  std = jnp.sqrt(variance + epsilon)
  hinge = jnp.mean(jax.nn.relu(target - std))
  return jnp.where(defined, hinge, 0.0)


def variance_hinge(
  probabilities: jax.Array, mask: jax.Array, epsilon: float = STD_EPSILON
) -> jax.Array:
  """Returns FedUV's variance term on a batch of class probabilities.

  `mean_c max(0, gamma - std_c)`, where `std_c` is the standard deviation
  of class `c`'s probability over the batch and `gamma = 1 / sqrt(C)`, the
  standard deviation of a column of the `C x C` identity matrix. For a
  large batch the largest reachable `std_c`, that of a balanced one-hot
  column, is `sqrt(C - 1) / C < gamma`, so the hinge stays active.

  Args:
    probabilities: `[batch, num_classes]` softmax outputs; a binary model's
      one logit gives the two columns `[1 - p, p]`
      (`fedjax_med.losses.probabilities`).
    mask: `[batch]` bool, True for real rows.
    epsilon: Added to each column's variance before the square root.

  Returns:
    A scalar; 0 when fewer than 2 rows are real.

  Raises:
    ValueError: If `probabilities` has fewer than 2 columns.
  """
  num_classes = probabilities.shape[-1]
  if num_classes < 2:
    raise ValueError(
      f"variance_hinge got probabilities of shape {probabilities.shape}; "
      "pass one column per class, e.g. losses.probabilities(logits), which "
      "gives two columns for a binary model."
    )
  gamma = 1.0 / jnp.sqrt(float(num_classes))
  return std_hinge(probabilities, mask, gamma, epsilon)


def uniformity(
  features: jax.Array, mask: jax.Array, stop_gradient_bandwidth: bool = True
) -> jax.Array:
  """Returns FedUV's uniformity term, a Gaussian potential over pairs.

  `mean_{i<j} exp(-d_ij / s)`, where `d_ij = ||z_i - z_j||^2` runs over
  pairs of real rows and `s` is the lower median of the nonzero `d_ij`.

  Args:
    features: `[batch, feature_dim]` representations `z`.
    mask: `[batch]` bool, True for real rows.
    stop_gradient_bandwidth: Whether `s` is a constant for
      differentiation.

  Returns:
    A scalar in [0, 1]; 0 when fewer than 2 rows are real.
  """
  batch = features.shape[0]
  features = jnp.where(mask[:, None], features, 0.0)
  differences = features[:, None, :] - features[None, :, :]
  distances = jnp.sum(differences**2, axis=-1)
  upper = jnp.triu(jnp.ones((batch, batch), bool), k=1)
  pairs = upper & mask[:, None] & mask[None, :]
  num_pairs = jnp.sum(pairs.astype(features.dtype))

  nonzero = pairs & (distances > 0)
  num_nonzero = jnp.sum(nonzero.astype(jnp.int32))
  ordered = jnp.sort(jnp.where(nonzero, distances, jnp.inf).ravel())
  median = ordered[jnp.maximum((num_nonzero - 1) // 2, 0)]
  bandwidth = jnp.where(num_nonzero > 0, median, 1.0)
  if stop_gradient_bandwidth:
    bandwidth = jax.lax.stop_gradient(bandwidth)

  potential = jnp.where(pairs, jnp.exp(-distances / bandwidth), 0.0)
  return jnp.sum(potential) / jnp.maximum(num_pairs, 1.0)


def _normalize(vectors: jax.Array) -> jax.Array:
  # max(||v||, eps) written so that its gradient at v = 0 is finite.
  squared = jnp.sum(vectors**2, axis=-1, keepdims=True)
  return vectors / jnp.sqrt(jnp.maximum(squared, _COSINE_EPSILON**2))


def cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
  """Returns the cosine between matching rows of `a` and `b`, `[batch]`.

  Norms below 1e-8 are raised to 1e-8, so a zero row has cosine 0.
  """
  return jnp.sum(_normalize(a) * _normalize(b), axis=-1)


def model_contrastive(
  z: jax.Array,
  z_global: jax.Array,
  z_previous: jax.Array,
  temperature: float | jax.Array,
  mask: jax.Array,
) -> jax.Array:
  """Returns MOON's model-contrastive loss, averaged over real rows.

  Per row, `-log(exp(cos(z, z_global) / t) / (exp(cos(z, z_global) / t) +
  exp(cos(z, z_previous) / t)))`: the global model's representation is the
  positive and the previous local model's the negative. Both are constants
  for differentiation (the frozen models of MOON).

  Args:
    z: `[batch, feature_dim]` representations of the model being trained.
    z_global: `[batch, feature_dim]` of the round's global model.
    z_previous: `[batch, feature_dim]` of the client's previous local model.
    temperature: The softmax temperature `t > 0`.
    mask: `[batch]` bool, True for real rows.

  Returns:
    A scalar; 0 when no row is real. It is per-example, so one real row
    gives that row's loss.
  """
  z_global = jax.lax.stop_gradient(z_global)
  z_previous = jax.lax.stop_gradient(z_previous)
  positive = cosine_similarity(z, z_global)
  negative = cosine_similarity(z, z_previous)
  logits = jnp.stack([positive, negative], axis=-1) / temperature
  labels = jnp.zeros(z.shape[0], jnp.int32)
  per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return masked_mean(jnp.where(mask, per_example, 0.0), mask)
