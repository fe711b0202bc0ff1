"""Pytree helpers for stacked per-client state.

Arithmetic on single trees (add, scale, norms) comes from `optax.tree_utils`;
this module adds what a leading client axis needs: gathering the cohort's
rows and scattering its results back.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def stack_trees(tree: PyTree, num: int) -> PyTree:
  """Repeats `tree` along a new leading axis of size `num`."""
  return jax.tree.map(
    lambda leaf: jnp.broadcast_to(leaf, (num, *jnp.shape(leaf))), tree
  )


def gather_rows(stacked: PyTree, ids: jax.Array) -> PyTree:
  """Takes rows `ids` of every leaf; out-of-range ids are clamped."""
  return jax.tree.map(lambda leaf: jnp.take(leaf, ids, axis=0), stacked)


def scatter_rows(
  stacked: PyTree, ids: jax.Array, rows: PyTree, mask: jax.Array
) -> PyTree:
  """Writes `rows[i]` into row `ids[i]` of every leaf where `mask[i]`.

  Rows with `mask[i] == False` are dropped, so padding slots of a cohort
  never overwrite a real client's state. Ids of masked-in rows must be
  distinct.
  """
  leaves = jax.tree.leaves(stacked)
  if not leaves:
    return stacked
  num_rows = leaves[0].shape[0]
  target = jnp.where(mask, ids, num_rows)  # num_rows is out of range.

  def scatter(leaf, new):
    return leaf.at[target].set(new.astype(leaf.dtype), mode="drop")

  return jax.tree.map(scatter, stacked, rows)


def masked_sum(tree: PyTree, mask: jax.Array) -> PyTree:
  """Sums every leaf over its leading axis, counting rows where `mask`."""

  def total(leaf):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      # A dot, not a reduction of `leaf * weights`, because XLA:CPU ran that
      # fused reduction several times slower. In a one-off profile (jax
      # 0.10.2, 2-core AMD EPYC) it took 5 ms, against under 1 ms for the
      # dot, for 200 clients of a 64 x 64 matrix.
      return jnp.tensordot(
        mask.astype(leaf.dtype),
        leaf,
        axes=1,
        precision=jax.lax.Precision.HIGHEST,
      )
    weights = mask.astype(leaf.dtype).reshape((-1,) + (1,) * (leaf.ndim - 1))
    return jnp.sum(leaf * weights, axis=0)

  return jax.tree.map(total, tree)
