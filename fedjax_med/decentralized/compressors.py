"""Compression operators for compressed gossip, with exact payload sizes.

A `Compressor` maps one array to its compressed value, returned dense (same
shape and dtype) so that the gossip arithmetic stays the same, and reports
the bytes its encoding takes on the wire. CHOCO-SGD needs an operator with
`E ||Q(x) - x||^2 <= (1 - delta) ||x||^2` for some `delta > 0`; every
operator here meets that bound.

  * "identity": `Q(x) = x`, `delta = 1`; sent as a dense array.
  * "top_k": keeps the `k = max(1, ceil(fraction * size))` entries of
    largest magnitude of each array and zeroes the rest, `delta = k / size`.
    Sent as `k` (value, int32 index) pairs, or as a dense array when that
    is smaller.
  * "qsgd": the stochastic quantizer of D. Alistarh, D. Grubic, J. Li,
    R. Tomioka, M. Vojnovic, "QSGD: Communication-Efficient SGD via Gradient
    Quantization and Encoding", NeurIPS 2017, arXiv:1610.02132, rescaled by
    `1 / tau`, `tau = 1 + min(size / s^2, sqrt(size) / s)`, as CHOCO-SGD
    uses it (the unscaled quantizer is unbiased but its variance can exceed
    `||x||^2`). Each array is sent as its float32 norm plus, per entry, a
    sign bit and a level in `0..s` in `ceil(log2(s + 1))` bits, with no
    entropy coding.

Compression acts on each array (each leaf of a parameter tree) separately.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

COMPRESSORS = ("identity", "top_k", "qsgd")
# Bytes of one int32 index of a sparse entry.
_INDEX_BYTES = 4


class Compressor(NamedTuple):
  """A compression operator for one array.

  Attributes:
    compress: `(key, x) -> Q(x)`, dense, with the shape and dtype of `x`.
    payload_bytes: `(shape, dtype) -> int`, the bytes of `Q(x)`'s encoding
      for an array of that shape and dtype; it does not depend on the
      values.
  """

  compress: Callable[[jax.Array, jax.Array], jax.Array]
  payload_bytes: Callable[[tuple[int, ...], np.dtype], int]


def _dense_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
  return math.prod(shape) * np.dtype(dtype).itemsize


def identity() -> Compressor:
  """Returns the operator that sends every array unchanged."""

  def compress(key, x):
    del key
    return x

  return Compressor(compress, _dense_bytes)


def top_k_count(size: int, fraction: float) -> int:
  """Returns the entries top-k keeps of an array with `size` entries."""
  return min(size, max(1, math.ceil(fraction * size)))


def top_k(fraction: float) -> Compressor:
  """Returns the operator that keeps a `fraction` of each array's entries.

  Raises:
    ValueError: If `fraction` is not in (0, 1].
  """
  if not 0 < fraction <= 1:
    raise ValueError(
      f"top_k fraction={fraction} must be in (0, 1]; pass e.g. 0.1 to keep "
      "a tenth of the entries."
    )

  def compress(key, x):
    del key
    flat = jnp.ravel(x)
    k = top_k_count(flat.size, fraction)
    _, indices = jax.lax.top_k(jnp.abs(flat), k)
    kept = jnp.zeros_like(flat).at[indices].set(flat[indices])
    return kept.reshape(x.shape)

  def payload_bytes(shape, dtype):
    size = math.prod(shape)
    k = top_k_count(size, fraction)
    sparse = k * (np.dtype(dtype).itemsize + _INDEX_BYTES)
    return min(sparse, _dense_bytes(shape, dtype))

  return Compressor(compress, payload_bytes)


def qsgd(levels: int) -> Compressor:
  """Returns QSGD with `levels` quantization levels, rescaled by `1 / tau`.

  Raises:
    ValueError: If `levels < 1`.
  """
  if levels < 1:
    raise ValueError(
      f"qsgd levels={levels} must be at least 1; pass e.g. 15 (5 bits per "
      "entry with the sign)."
    )
  level_bits = math.ceil(math.log2(levels + 1))

  def compress(key, x):
    size = x.size
    tau = 1.0 + min(size / levels**2, math.sqrt(size) / levels)
    norm = jnp.linalg.norm(jnp.ravel(x).astype(jnp.float32))
    safe_norm = jnp.where(norm > 0, norm, 1.0)
    scaled = levels * jnp.abs(x) / safe_norm
    noise = jax.random.uniform(key, x.shape, dtype=scaled.dtype)
    level = jnp.floor(scaled + noise)
    quantized = jnp.sign(x) * safe_norm * level / (levels * tau)
    return jnp.where(norm > 0, quantized, 0.0).astype(x.dtype)

  def payload_bytes(shape, dtype):
    del dtype  # The norm is sent as float32 whatever the array's dtype.
    bits = math.prod(shape) * (1 + level_bits)
    return 4 + math.ceil(bits / 8)

  return Compressor(compress, payload_bytes)


def make_compressor(
  name: str, *, fraction: float = 0.1, levels: int = 16
) -> Compressor:
  """Builds a compressor by name.

  Args:
    name: One of `COMPRESSORS`.
    fraction: Share of entries "top_k" keeps.
    levels: Quantization levels of "qsgd".

  Raises:
    ValueError: For an unknown name or an invalid setting.
  """
  if name == "identity":
    return identity()
  if name == "top_k":
    return top_k(fraction)
  if name == "qsgd":
    return qsgd(levels)
  raise ValueError(f"compressor={name!r} is unknown; use one of {COMPRESSORS}.")


def compress_tree(compressor: Compressor, key: jax.Array, tree):
  """Compresses every leaf with its own key, `fold_in(key, leaf_index)`."""
  leaves, treedef = jax.tree.flatten(tree)
  compressed = [
    compressor.compress(jax.random.fold_in(key, index), leaf)
    for index, leaf in enumerate(leaves)
  ]
  return jax.tree.unflatten(treedef, compressed)


def tree_payload_bytes(compressor: Compressor, tree) -> int:
  """Returns the bytes of one compressed copy of `tree` (shapes only)."""
  return sum(
    compressor.payload_bytes(tuple(leaf.shape), leaf.dtype)
    for leaf in jax.tree.leaves(tree)
  )
