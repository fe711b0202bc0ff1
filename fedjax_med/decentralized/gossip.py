"""Gossip averaging over a graph, exact and compressed.

Nodes' models are stacked on a leading `num_nodes` axis `[n, ...]`, and one
gossip step replaces every node's model with the weighted average of its
neighbours' and its own, `X <- W X` with the mixing matrix `W` of
`topology.py`, computed as one einsum per leaf. `consensus_distance`
measures how far the nodes are from agreeing.

`choco_gossip_step` is CHOCO-Gossip, from A. Koloskova, S. U. Stich,
M. Jaggi, "Decentralized Stochastic Optimization and Gossip Algorithms with
Compressed Communication", ICML 2019, arXiv:1902.00340. Every node keeps a
public copy `x^_i` of its model, which its neighbours also keep, and sends
only the compressed difference `q_i = Q(x_i - x^_i)`:

  x^_i <- x^_i + q_i
  x_i <- x_i + gamma sum_j W_ij (x^_j - x^_i)

The second line preserves the nodes' average exactly whatever `Q` does,
because `W` is symmetric and doubly stochastic. With `Q` the identity and
`gamma = 1` the step is exact gossip.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from optax import tree_utils as otu

from fedjax_med.decentralized import compressors as compressors_lib

PyTree = Any


def gossip_step(mixing_matrix: jax.Array, stacked: PyTree) -> PyTree:
  """Returns `W @ X` for every leaf `X` of a tree stacked over nodes.

  Args:
    mixing_matrix: `[n, n]` mixing matrix `W`.
    stacked: Tree whose floating-point leaves have a leading `n` axis;
      other leaves (integer counters) are returned unchanged.
  """

  def mix(leaf):
    if not jnp.issubdtype(leaf.dtype, jnp.inexact):
      return leaf
    weights = jnp.asarray(mixing_matrix, leaf.dtype)
    # HIGHEST rules out reduced-precision (TF32) passes on accelerators.
    return jnp.einsum(
      "ij,j...->i...", weights, leaf, precision=jax.lax.Precision.HIGHEST
    )

  return jax.tree.map(mix, stacked)


def consensus_distance(stacked: PyTree) -> jax.Array:
  """Returns `(1/n) sum_i ||x_i - x_bar||^2` over a tree stacked over nodes."""

  def leaf_distance(leaf):
    deviation = leaf - jnp.mean(leaf, axis=0, keepdims=True)
    return jnp.sum(jnp.square(deviation)) / leaf.shape[0]

  return sum(jax.tree.leaves(jax.tree.map(leaf_distance, stacked)), 0.0)


def choco_gossip_step(
  mixing_matrix: jax.Array,
  stacked: PyTree,
  public_copies: PyTree,
  key: jax.Array,
  compressor: compressors_lib.Compressor,
  consensus_step_size: float,
) -> tuple[PyTree, PyTree]:
  """Runs one CHOCO-Gossip step; returns `(x, x^)` after it.

  Node `i` compresses `x_i - x^_i` with key `fold_in(key, i)`.
  """
  num_nodes = jax.tree.leaves(stacked)[0].shape[0]
  node_keys = jax.vmap(jax.random.fold_in, (None, 0))(
    key, jnp.arange(num_nodes)
  )
  difference = otu.tree_sub(stacked, public_copies)
  message = jax.vmap(
    lambda k, tree: compressors_lib.compress_tree(compressor, k, tree)
  )(node_keys, difference)
  public_copies = otu.tree_add(public_copies, message)
  correction = otu.tree_sub(
    gossip_step(mixing_matrix, public_copies), public_copies
  )
  stacked = otu.tree_add_scale(stacked, consensus_step_size, correction)
  return stacked, public_copies
