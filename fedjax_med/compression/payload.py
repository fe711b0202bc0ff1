"""The `Compressor` contract and exact byte counts of what a client sends.

A compressor is a NamedTuple of pure functions, in the manner of optax's
`GradientTransformation`:

  * `init(tree) -> state`: one client's state for trees shaped like `tree`
    (an empty tuple for stateless operators, the residual for error
    feedback).
  * `compress(key, tree, state) -> (payload, state)`: the message and the
    new state.
  * `decompress(payload) -> tree`: what the receiver reconstructs.
  * `num_bytes(tree_shapes) -> int`: the exact size of the payload for trees
    with these shapes (a pytree of `jax.ShapeDtypeStruct` or arrays).

Byte convention: `num_bytes` traces `compress` abstractly and counts the
payload's arrays, each as `size * dtype.itemsize`, except arrays wrapped in
`PackedIntegers`, which count `ceil(size * bits / 8)` bytes. Such integers
are held in a wider dtype in memory, but the wire packs them at `bits` bits
each, byte-aligned per array. No framing or entropy coding is counted.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

PyTree = Any


class Compressor(NamedTuple):
  """Pure functions of one compression operator (see the module docstring).

  Attributes:
    init: `tree -> state` for one client.
    compress: `(key, tree, state) -> (payload, state)`.
    decompress: `payload -> tree`.
    num_bytes: `tree_shapes -> int`, the payload's size in bytes.
  """

  init: Callable[[PyTree], PyTree]
  compress: Callable[[jax.Array, PyTree, PyTree], tuple[PyTree, PyTree]]
  decompress: Callable[[PyTree], PyTree]
  num_bytes: Callable[[PyTree], int]


@dataclasses.dataclass(frozen=True)
class PackedIntegers:
  """Integers sent at `bits` bits each.

  Attributes:
    values: The integers, in an in-memory dtype at least `bits` wide.
    bits: Bits per entry on the wire (static).
  """

  values: jax.Array
  bits: int


jax.tree_util.register_dataclass(
  PackedIntegers, data_fields=["values"], meta_fields=["bits"]
)


def _leaf_bytes(leaf) -> int:
  if isinstance(leaf, PackedIntegers):
    size = math.prod(leaf.values.shape)
    return -(-size * leaf.bits // 8)
  return math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize


def payload_bytes(payload: PyTree) -> int:
  """Returns the bytes of a payload (arrays or their shapes), as documented.

  Arrays count `size * itemsize`; `PackedIntegers` count
  `ceil(size * bits / 8)`.
  """
  leaves = jax.tree.leaves(
    payload, is_leaf=lambda x: isinstance(x, PackedIntegers)
  )
  return sum(_leaf_bytes(leaf) for leaf in leaves)


def shapes_of(tree: PyTree) -> PyTree:
  """Returns the `ShapeDtypeStruct` of every leaf (works on tracers)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def traced_num_bytes(
  init: Callable[[PyTree], PyTree],
  compress: Callable[[jax.Array, PyTree, PyTree], tuple[PyTree, PyTree]],
) -> Callable[[PyTree], int]:
  """Builds `num_bytes` by tracing `compress` on abstract inputs."""

  def num_bytes(tree_shapes: PyTree) -> int:
    def message(tree):
      return compress(jax.random.PRNGKey(0), tree, init(tree))[0]

    return payload_bytes(jax.eval_shape(message, shapes_of(tree_shapes)))

  return num_bytes


def bits_for(num_values: int) -> int:
  """Returns the fixed width in bits that can encode `num_values` values."""
  return max(1, math.ceil(math.log2(num_values)))
