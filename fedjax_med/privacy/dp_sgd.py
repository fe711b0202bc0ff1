"""Example-level differential privacy inside a client: DP-SGD.

Reference: M. Abadi, A. Chu, I. Goodfellow, H. B. McMahan, I. Mironov,
K. Talwar, L. Zhang, "Deep Learning with Differential Privacy", CCS 2016,
arXiv:1607.00133.

Every local step of client `k` (with `n_k` real rows):

  1. draws a batch (see below) with a fixed number of slots and a mask;
  2. computes one gradient per example with `vmap(grad)` and clips each to
     L2 norm `C` (flat clipping over all leaves);
  3. sums the clipped gradients, adds `N(0, (z C)^2)` to the sum with one key
     per leaf (fresh keys every step), and divides by the expected batch
     size `min(batch_size, n_k)`, a constant of the client, never by the
     realised number of rows.

The gradient of an algorithm's regularizer (FedProx's proximal term,
SCAFFOLD's correction) depends on no record, so it is added unclipped and
un-noised. The local optimizer (SGD, momentum, Adam) post-processes the
noisy gradient.

Batch sampling:
  * "poisson": each real row is included independently with probability
    `q_k = min(1, batch_size / n_k)`, so the expected batch size is
    `q_k n_k = min(batch_size, n_k)` and the denominator is `batch_size`
    for every client with at least `batch_size` rows. By default the batch
    has one slot per padded row, which is exact Poisson sampling. With
    `poisson_capacity` set, a draw larger than the capacity keeps a uniform
    random subset of that size. An accountant must treat this truncated
    Poisson sampling as such, with
    `dp_accounting.TruncatedSubsampledGaussianDpEvent`, and not as plain
    Poisson sampling.
  * "fixed_size": every step draws `min(batch_size, n_k)` distinct rows
    uniformly at random, independently of other steps (sampling without
    replacement, to be accounted under replace-one adjacency).

An empty Poisson batch, or a client with no rows, takes a noise-only step.

Choices this implementation makes:
  * `n_k` is treated as public, as Opacus does when it sets the sampling
    rate to `batch_size / len(dataset)`. The rate `q_k` then differs by
    client, and the guarantee of client `k` is that of `q_k` over
    `num_rounds * num_local_steps` steps; the smallest client has the
    largest rate (`sampling_rates` returns them all).
  * The noise multiplier `z` is relative to `C` under add/remove adjacency
    of records. Under replace-one adjacency an accountant must be given
    `z / 2`.
  * Models with non-trainable state (batch normalization statistics) are
    rejected, because such statistics mix examples and are released
    without noise.
  * The round's `train_loss` metric averages the raw losses of the sampled
    rows. It is a diagnostic of the simulation, not a privatized release.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from optax import tree_utils as otu

from fedjax_med import losses
from fedjax_med.core.client import ClientBatch
from fedjax_med.privacy import clipping

PyTree = Any
# `(params, x [*feature_shape], y [], rng) -> scalar loss of one example`.
ExampleLoss = Callable[[PyTree, jax.Array, jax.Array, jax.Array], jax.Array]

BATCH_SAMPLING = ("poisson", "fixed_size")


class DPSGDConfig(NamedTuple):
  """Settings of DP-SGD inside every client.

  Attributes:
    clip_norm: The per-example clip norm `C`.
    noise_multiplier: `z`. The noise on each step's sum of clipped
      gradients has standard deviation `z * C`.
    batch_sampling: "poisson" or "fixed_size".
    poisson_capacity: Slots of a Poisson batch; None gives one slot per
      padded row (exact Poisson sampling).
  """

  clip_norm: float = 1.0
  noise_multiplier: float = 1.0
  batch_sampling: str = "poisson"
  poisson_capacity: int | None = None


def sampling_rates(
  num_examples: np.ndarray | list[int], batch_size: int
) -> np.ndarray:
  """Returns each client's Poisson rate `q_k = min(1, batch_size / n_k)`.

  Args:
    num_examples: Real rows per client, shape `[num_clients]`.
    batch_size: The configured batch size.

  Returns:
    Float64 rates of shape `[num_clients]`, and 0 for a client with no
    rows.
  """
  n = np.asarray(num_examples, np.float64)
  return np.where(n > 0, np.minimum(1.0, batch_size / np.maximum(n, 1.0)), 0.0)


def expected_batch_size(num_examples: jax.Array, batch_size: int) -> jax.Array:
  """Returns `min(batch_size, n_k)`, or `batch_size` when `n_k = 0`."""
  n = num_examples.astype(jnp.float32)
  return jnp.where(n > 0, jnp.minimum(float(batch_size), n), float(batch_size))


def poisson_batch(
  key: jax.Array,
  num_examples: jax.Array,
  max_examples: int,
  batch_size: int,
  capacity: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Draws a Poisson batch of rate `min(1, batch_size / n_k)`.

  Args:
    key: PRNG key of this step.
    num_examples: `n_k`, scalar int; rows `[0, n_k)` are real.
    max_examples: Padded rows of the client (static).
    batch_size: The configured batch size (static).
    capacity: Slots of the batch (static); None for `max_examples`.

  Returns:
    `(indices, mask)`, each of shape `[capacity]`: row indices into the
    client's padded rows, and which slots hold a sampled row.
  """
  n = num_examples.astype(jnp.float32)
  rate = jnp.minimum(1.0, batch_size / jnp.maximum(n, 1.0))
  rows = jnp.arange(max_examples)
  inclusion_key, truncation_key = jax.random.split(key)
  included = jax.random.bernoulli(inclusion_key, rate, (max_examples,))
  included = included & (rows < num_examples)
  if capacity is None or capacity >= max_examples:
    return rows, included
  # Included rows first, in random order, so that an overflowing draw keeps
  # a uniform random subset of `capacity` rows.
  scores = jax.random.uniform(truncation_key, (max_examples,))
  order = jnp.argsort(jnp.where(included, scores, 2.0))[:capacity]
  return order, included[order]


def fixed_size_batch(
  key: jax.Array,
  num_examples: jax.Array,
  max_examples: int,
  batch_size: int,
) -> tuple[jax.Array, jax.Array]:
  """Draws `min(batch_size, n_k)` distinct real rows uniformly at random.

  Returns:
    `(indices, mask)`, each of shape `[min(batch_size, max_examples)]`.
  """
  slots = min(batch_size, max_examples)
  rows = jnp.arange(max_examples)
  scores = jax.random.uniform(key, (max_examples,))
  # Padding rows sort last, so the first `n_k` positions are real rows.
  order = jnp.argsort(jnp.where(rows < num_examples, scores, 2.0))[:slots]
  mask = jnp.arange(slots) < jnp.minimum(batch_size, num_examples)
  return order, mask


def clipped_gradient_sum(
  example_loss: ExampleLoss,
  params: PyTree,
  x: jax.Array,
  y: jax.Array,
  mask: jax.Array,
  rngs: jax.Array,
  clip_norm: float,
) -> tuple[PyTree, jax.Array, jax.Array]:
  """Sums per-example gradients, each clipped to L2 norm `clip_norm`.

  Args:
    example_loss: Loss of one example.
    params: Model parameters.
    x: Batch features `[slots, *feature_shape]`.
    y: Batch labels `[slots]`.
    mask: `[slots]` bool; masked-out slots contribute nothing.
    rngs: One PRNG key per slot, `[slots, 2]`, for dropout.
    clip_norm: The bound `C`.

  Returns:
    `(summed, example_losses, norms)`: the sum of clipped gradients shaped
    like `params`, and the per-example losses and gradient norms before
    clipping, each `[slots]`.
  """
  value_and_grad = jax.vmap(
    jax.value_and_grad(example_loss), in_axes=(None, 0, 0, 0)
  )
  example_losses, grads = value_and_grad(params, x, y, rngs)

  # Zero the masked slots first, so that a non-finite gradient of a padding
  # row cannot reach the sum.
  def zero_masked(leaf):
    row_mask = mask.reshape((-1,) + (1,) * (leaf.ndim - 1))
    return jnp.where(row_mask, leaf, 0.0)

  grads = jax.tree.map(zero_masked, grads)
  clipped, norms = jax.vmap(clipping.clip_by_global_norm, in_axes=(0, None))(
    grads, clip_norm
  )
  summed = jax.tree.map(lambda leaf: jnp.sum(leaf, axis=0), clipped)
  return summed, example_losses, norms


def make_batch_gradient(config: DPSGDConfig, batch_size: int):
  """Builds the DP-SGD gradient of one local step for `local_train`.

  Args:
    config: DP-SGD settings.
    batch_size: The configured batch size (static).

  Returns:
    `batch_gradient(example_loss, params, batch, key) -> (gradient,
    data_loss)`: the noisy mean of clipped per-example gradients and the
    mean loss of the sampled rows (0 for an empty batch). `batch` is a
    `ClientBatch` of padded rows and `key` the step's PRNG key.

  Raises:
    ValueError: For invalid clip norm, noise multiplier, batch sampling or
      capacity.
  """
  clipping.validate_dp_settings(config.clip_norm, config.noise_multiplier)
  if config.batch_sampling not in BATCH_SAMPLING:
    raise ValueError(
      f"batch_sampling={config.batch_sampling!r} is unknown; use one of "
      f"{BATCH_SAMPLING}."
    )
  capacity = config.poisson_capacity
  if capacity is not None and capacity < batch_size:
    raise ValueError(
      f"poisson_capacity={capacity} is below batch_size={batch_size}, the "
      "expected Poisson batch size; raise it (e.g. to a few times "
      "batch_size) or set it to None for exact Poisson sampling."
    )
  noise_stddev = config.noise_multiplier * config.clip_norm

  def batch_gradient(example_loss, params, batch: ClientBatch, key):
    sample_key, noise_key, dropout_key = jax.random.split(key, 3)
    max_examples = batch.x.shape[0]
    if config.batch_sampling == "poisson":
      indices, mask = poisson_batch(
        sample_key, batch.num_examples, max_examples, batch_size, capacity
      )
    else:
      indices, mask = fixed_size_batch(
        sample_key, batch.num_examples, max_examples, batch_size
      )
    x = jnp.take(batch.x, indices, axis=0)
    y = jnp.take(batch.y, indices, axis=0)
    rngs = jax.random.split(dropout_key, indices.shape[0])

    summed, example_losses, _ = clipped_gradient_sum(
      example_loss, params, x, y, mask, rngs, config.clip_norm
    )
    noisy_sum = clipping.add_gaussian_noise(summed, noise_stddev, noise_key)
    denominator = expected_batch_size(batch.num_examples, batch_size)
    gradient = otu.tree_scale(1.0 / denominator, noisy_sum)
    return gradient, losses.masked_mean(example_losses, mask)

  return batch_gradient
