"""Random rotation before stochastic quantization.

Reference: A. T. Suresh, F. X. Yu, S. Kumar, H. B. McMahan, "Distributed
Mean Estimation with Limited Communication", ICML 2017, arXiv:1611.00429
(the quantizer `pi_srk` with the randomized Hadamard rotation).

Each leaf is flattened and zero-padded to `d'`, the next power of two, and
rotated: `y = H D x / sqrt(d')`, with `H` the Walsh-Hadamard matrix and `D` a
diagonal of random signs. Every `y_j` is then rounded at random to one of
`num_levels` evenly spaced values between `min(y)` and `max(y)`, up with
probability equal to its fractional position, so the quantizer is unbiased.
The receiver rebuilds `y`, applies the inverse rotation `D H / sqrt(d')` and
drops the padding. The rotation spreads the vector's energy over all
coordinates, so `max(y) - min(y)` is
`O(sqrt(log d' / d')) ||x||` with high probability, and the error
`E||Q(x) - x||^2 <= d' (max(y) - min(y))^2 / (4 (num_levels - 1)^2)` (each
coordinate's rounding variance is at most a quarter of the squared level
spacing).

Wire format: the levels of the padded vector at `ceil(log2(num_levels))`
bits each, `min(y)` and `max(y)` as float32 per leaf, and the 8-byte PRNG key
from which every leaf's signs are derived (the receiver needs it to invert
the rotation). The paper leaves open whether the rotation is shared; here
each message draws its own from the key it is given.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med.compression.operators import (
  _check_levels,
  _no_state,
  _stochastic_round,
)
from fedjax_med.compression.payload import (
  Compressor,
  PackedIntegers,
  bits_for,
  traced_num_bytes,
)


def padded_size(size: int) -> int:
  """Returns the power of two the Hadamard transform of `size` values needs."""
  return 1 << max(0, (size - 1).bit_length())


def hadamard_transform(x: jax.Array) -> jax.Array:
  """Orthonormal fast Walsh-Hadamard transform of a vector of length 2^m.

  The transform is symmetric and its own inverse.
  """
  size = x.shape[0]
  if size & (size - 1):
    raise ValueError(f"length {size} is not a power of two; pad it first.")
  half = 1
  while half < size:
    # Butterflies between entries `half` apart inside blocks of `2 * half`.
    pairs = x.reshape(-1, 2, half)
    x = jnp.stack(
      [pairs[:, 0] + pairs[:, 1], pairs[:, 0] - pairs[:, 1]], axis=1
    ).reshape(size)
    half *= 2
  return x / jnp.sqrt(jnp.float32(size))


def _signs(key, size):
  return jax.random.rademacher(key, (size,), jnp.float32)


@dataclasses.dataclass(frozen=True)
class RotatedLeaf:
  """One rotated leaf quantized between its minimum and maximum."""

  levels: PackedIntegers
  low: jax.Array
  high: jax.Array
  num_levels: int
  shape: tuple[int, ...]
  dtype: np.dtype


jax.tree_util.register_dataclass(
  RotatedLeaf,
  data_fields=["levels", "low", "high"],
  meta_fields=["num_levels", "shape", "dtype"],
)


@dataclasses.dataclass(frozen=True)
class RotatedTree:
  """The rotation key and every leaf's quantized rotation."""

  key: jax.Array
  leaves: object


jax.tree_util.register_dataclass(
  RotatedTree, data_fields=["key", "leaves"], meta_fields=[]
)


def rotated_quantization(num_levels: int) -> Compressor:
  """Randomized Hadamard rotation, then `num_levels`-level quantization."""
  _check_levels(num_levels, 2, "rotated_quantization")
  bits = bits_for(num_levels)
  storage = jnp.uint8 if num_levels <= 256 else jnp.uint32

  def quantize(key, leaf):
    flat = jnp.ravel(leaf).astype(jnp.float32)
    size = padded_size(flat.shape[0])
    sign_key, round_key = jax.random.split(key)
    padded = jnp.pad(flat, (0, size - flat.shape[0]))
    rotated = hadamard_transform(_signs(sign_key, size) * padded)
    low, high = jnp.min(rotated), jnp.max(rotated)
    spacing = (high - low) / (num_levels - 1)
    safe = jnp.where(spacing > 0, spacing, 1.0)
    level = _stochastic_round(round_key, (rotated - low) / safe)
    level = jnp.minimum(level, num_levels - 1).astype(storage)
    return RotatedLeaf(
      PackedIntegers(level, bits),
      low,
      high,
      num_levels,
      tuple(leaf.shape),
      np.dtype(leaf.dtype),
    )

  def compress(key, tree, state):
    key_data = key
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
      key_data = jax.random.key_data(key)
    leaves, treedef = jax.tree.flatten(tree)
    quantized = [
      quantize(jax.random.fold_in(key_data, i), leaf)
      for i, leaf in enumerate(leaves)
    ]
    return RotatedTree(key_data, jax.tree.unflatten(treedef, quantized)), state

  def decompress(payload: RotatedTree):
    leaves, treedef = jax.tree.flatten(
      payload.leaves, is_leaf=lambda x: isinstance(x, RotatedLeaf)
    )
    restored = []
    for i, leaf in enumerate(leaves):
      sign_key, _ = jax.random.split(jax.random.fold_in(payload.key, i))
      spacing = (leaf.high - leaf.low) / (leaf.num_levels - 1)
      rotated = leaf.low + leaf.levels.values.astype(jnp.float32) * spacing
      size = rotated.shape[0]
      flat = _signs(sign_key, size) * hadamard_transform(rotated)
      count = int(np.prod(leaf.shape))
      restored.append(flat[:count].reshape(leaf.shape).astype(leaf.dtype))
    return jax.tree.unflatten(treedef, restored)

  return Compressor(
    _no_state, compress, decompress, traced_num_bytes(_no_state, compress)
  )
