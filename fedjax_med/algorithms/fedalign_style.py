"""Style statistics and MixStyle for FedAlign, written for the compiled round.

A style is a mean and a standard deviation per channel: per image over
height and width for images `[height, width, channels]`, and per feature
over a group of rows for tabular data `[features]`. `build_style_pool`
collects every client's styles with fixed shapes, `sample_style_indices`
draws other clients' entries, `in_batch_partners` pairs rows within a batch,
and `mix_style` is MixStyle (K. Zhou, Y. Yang, Y. Qiao, T. Xiang, "Domain
Generalization with MixStyle", ICLR 2021, arXiv:2104.02008) applied to the
input. `fedjax_med.algorithms.fedalign` documents how FedAlign uses them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

# Added to the variance under the square root, as in the released code.
STYLE_EPSILON = 1e-6


class StylePool(NamedTuple):
  """Style statistics of every client for one round.

  Attributes:
    mean: `[num_clients, entries, channels]` (channels are features for
      tabular data).
    std: Same shape as `mean`.
    valid: `[num_clients, entries]` bool, False on unused entries.
  """

  mean: jax.Array
  std: jax.Array
  valid: jax.Array


def instance_statistics(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Returns each image's per-channel mean and std, `[batch, channels]`.

  The variance divides by `height * width`. Dividing by one less, as
  PyTorch's `var` does, scales every standard deviation by the same factor,
  which cancels in MixStyle up to the epsilon.
  """
  mean = jnp.mean(x, axis=(1, 2))
  std = jnp.sqrt(jnp.var(x, axis=(1, 2)) + STYLE_EPSILON)
  return mean, std


def masked_feature_statistics(
  x: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Returns the per-feature mean and std over the real rows, `[features]`."""
  weights = mask.astype(x.dtype)[:, None]
  count = jnp.maximum(jnp.sum(weights), 1.0)
  mean = jnp.sum(weights * x, axis=0) / count
  variance = jnp.sum(weights * (x - mean) ** 2, axis=0) / count
  return mean, jnp.sqrt(variance + STYLE_EPSILON)


def _fraction_count(fraction: float, n):
  # The tolerance keeps a product such as 0.1 * 240 from rounding up to 25.
  return jnp.ceil(fraction * n - 1e-4).astype(jnp.int32)


def pool_entries(max_examples: int, style_fraction: float, image: bool) -> int:
  """Returns the pool's static entries per client."""
  if not image:
    return 1
  return max(math.ceil(style_fraction * max_examples - 1e-4), 1)


def build_style_pool(
  x: jax.Array,
  num_examples: jax.Array,
  key: jax.Array,
  style_fraction: float,
) -> StylePool:
  """Computes every client's style statistics from a random share of rows.

  Args:
    x: Training rows, `[num_clients, max_examples, *feature_shape]`, images
      `[height, width, channels]` or tabular `[features]`.
    num_examples: Real rows per client, `[num_clients]`.
    key: Client `k` draws its rows with `fold_in(key, k)`.
    style_fraction: Share of each client's rows used, in (0, 1].

  Returns:
    The pool. Images give `ceil(style_fraction * n_k)` valid entries for
    client `k`. Tabular data gives one entry per client, over
    `max(ceil(style_fraction * n_k), 2)` rows (all rows if fewer).
  """
  num_clients, max_examples = x.shape[:2]
  image = x.ndim == 5
  slots = pool_entries(max_examples, style_fraction, True)
  if not image:
    slots = max(slots, min(2, max_examples))

  def one_client(rows, n, k):
    scores = jax.random.uniform(jax.random.fold_in(key, k), (max_examples,))
    scores = jnp.where(jnp.arange(max_examples) < n, scores, 2.0)
    chosen = rows[jnp.argsort(scores)[:slots]]
    count = _fraction_count(style_fraction, n)
    if not image:
      count = jnp.maximum(count, 2)
    valid = jnp.arange(slots) < jnp.minimum(count, n)
    if image:
      mean, std = instance_statistics(chosen)
      return mean, std, valid
    mean, std = masked_feature_statistics(chosen, valid)
    return mean[None], std[None], jnp.any(valid)[None]

  mean, std, valid = jax.vmap(one_client)(
    x, num_examples, jnp.arange(num_clients)
  )
  return StylePool(mean, std, valid)


def sample_style_indices(
  key: jax.Array, valid: jax.Array, client_id: jax.Array, num_rows: int
) -> tuple[jax.Array, jax.Array]:
  """Draws pool entries uniformly from the clients other than `client_id`.

  Args:
    key: Randomness of the draw.
    valid: `[num_clients, entries]` bool.
    client_id: The drawing client, whose entries are never drawn.
    num_rows: Number of draws.

  Returns:
    `(indices [num_rows], found)`: indices into the pool flattened to
    `[num_clients * entries]`, and whether any other client had an entry.
    When `found` is False the indices are meaningless.
  """
  num_clients, entries = valid.shape
  owner = jnp.repeat(jnp.arange(num_clients), entries)
  allowed = valid.reshape(-1) & (owner != client_id)
  logits = jnp.where(allowed, 0.0, -jnp.inf)
  indices = jax.random.categorical(key, logits, shape=(num_rows,))
  return indices, jnp.any(allowed)


def in_batch_partners(key: jax.Array, mask: jax.Array) -> jax.Array:
  """Pairs every real row with the next one in a random cyclic order.

  Returns:
    `[batch]` row indices. A padding row and the only real row of a
    one-row batch are paired with themselves.
  """
  size = mask.shape[0]
  scores = jnp.where(mask, jax.random.uniform(key, (size,)), 2.0)
  order = jnp.argsort(scores)
  rank = jnp.argsort(order)
  n = jnp.maximum(jnp.sum(mask.astype(jnp.int32)), 1)
  partners = order[(rank + 1) % n]
  return jnp.where(mask, partners, jnp.arange(size))


def mix_style(x, mean, std, target_mean, target_std, lam):
  """Re-standardizes `x` from `(mean, std)` to a `lam` mix with the target.

  All statistics and `lam` must broadcast against `x`; `lam = 1` returns
  `x` up to rounding and `lam = 0` gives the target statistics.
  """
  normalized = (x - mean) / std
  scale = lam * std + (1.0 - lam) * target_std
  shift = lam * mean + (1.0 - lam) * target_mean
  return normalized * scale + shift
