"""Random sketch matrices for sketched Newton methods.

A sketch `S` of shape `[sketch_size, n]` compresses `n` rows into
`sketch_size` rows, `A -> S A`, so that `(S A)^T (S A)` estimates `A^T A`
without bias: every sketch here is scaled so that `E[S^T S] = I_n`.

  * "gaussian": i.i.d. `N(0, 1 / sketch_size)` entries.
  * "rademacher": i.i.d. `+-1 / sqrt(sketch_size)` entries.
  * "srht": the subsampled randomized Hadamard transform of Ailon and
    Chazelle ("The Fast Johnson-Lindenstrauss Transform", STOC 2006),
    `S = sqrt(p / sketch_size) R H D` on the rows padded with zeros to
    `p`, the next power of two: `D` flips the sign of each row at random,
    `H` is the orthonormal Walsh-Hadamard matrix (applied with the fast
    transform, `O(p log p)` per column) and `R` keeps `sketch_size`
    distinct rows drawn uniformly without replacement. Then
    `E[R^T R] = (sketch_size / p) I_p`, so `E[S^T S] = I_n`.

`apply_sketch` computes `S A` (the SRHT without forming `S`);
`sketch_matrix` returns `S` itself, for tests and small problems. Both are
pure functions of the key, `jit`- and `vmap`-friendly, with `sketch_size`
and the kind static.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

SKETCH_TYPES = ("gaussian", "rademacher", "srht")


def validate_sketch(kind: str, sketch_size: int) -> None:
  """Raises ValueError for an unknown kind or a non-positive size."""
  if kind not in SKETCH_TYPES:
    raise ValueError(f"sketch={kind!r} is unknown; use one of {SKETCH_TYPES}.")
  if not isinstance(sketch_size, int) or sketch_size < 1:
    raise ValueError(
      f"sketch_size={sketch_size!r} must be a positive integer, e.g. "
      "--config.algorithm.sketch_size=10."
    )


def next_power_of_two(n: int) -> int:
  """Returns the smallest power of two that is at least `n` (and 1)."""
  return 1 << max(n - 1, 0).bit_length()


def fwht(x: jax.Array) -> jax.Array:
  """Applies the unnormalized Walsh-Hadamard transform along axis 0.

  Args:
    x: `[p, ...]` with `p` a power of two.

  Returns:
    `H_p x`, where `H_p` is the Sylvester-ordered Hadamard matrix with
    entries `+-1` (`scipy.linalg.hadamard(p)`).

  Raises:
    ValueError: If `p` is not a power of two.
  """
  p = x.shape[0]
  if p < 1 or p & (p - 1):
    raise ValueError(f"fwht needs a power-of-two length, got {p} rows.")
  rest = x.shape[1:]
  h = 1
  while h < p:
    # Pair row i with row i + h inside each block of 2h rows.
    blocks = x.reshape(p // (2 * h), 2, h, *rest)
    top, bottom = blocks[:, 0], blocks[:, 1]
    x = jnp.stack([top + bottom, top - bottom], axis=1).reshape(p, *rest)
    h *= 2
  return x


def _srht_parts(key: jax.Array, sketch_size: int, n: int, dtype):
  """Returns the SRHT's padded length, row signs and kept rows."""
  p = next_power_of_two(n)
  if sketch_size > p:
    raise ValueError(
      f"sketch_size={sketch_size} exceeds the {p} rows of the padded "
      f"Hadamard transform for n={n}; use sketch='gaussian' or "
      "'rademacher', or a sketch_size of at most the padded length."
    )
  sign_key, row_key = jax.random.split(key)
  signs = jax.random.rademacher(sign_key, (n,), dtype)
  rows = jax.random.choice(row_key, p, (sketch_size,), replace=False)
  return p, signs, rows


def apply_sketch(
  kind: str, key: jax.Array, a: jax.Array, sketch_size: int
) -> jax.Array:
  """Returns `S a` for a fresh sketch `S` of the given kind.

  Args:
    kind: One of `SKETCH_TYPES`.
    key: Draws `S`; the same key gives the same `S` for the same shape.
    a: `[n, ...]`; the sketch mixes axis 0.
    sketch_size: Rows of `S` (static).

  Returns:
    `[sketch_size, ...]`, in `a`'s dtype.
  """
  validate_sketch(kind, sketch_size)
  n = a.shape[0]
  if kind != "srht":
    matrix = sketch_matrix(kind, key, sketch_size, n, a.dtype)
    return jnp.tensordot(matrix, a, axes=1)
  p, signs, rows = _srht_parts(key, sketch_size, n, a.dtype)
  signed = a * signs.reshape(n, *([1] * (a.ndim - 1)))
  padded = jnp.pad(signed, [(0, p - n)] + [(0, 0)] * (a.ndim - 1))
  # sqrt(p / m) times the orthonormal H / sqrt(p) is H / sqrt(m).
  return fwht(padded)[rows] * (1.0 / math.sqrt(sketch_size))


def sketch_matrix(
  kind: str, key: jax.Array, sketch_size: int, n: int, dtype=jnp.float32
) -> jax.Array:
  """Returns the `[sketch_size, n]` sketch that `apply_sketch` applies.

  For "srht" the matrix is built by transforming the identity, which costs
  `O(n p log p)`; use it for tests and small `n` only.
  """
  validate_sketch(kind, sketch_size)
  scale = 1.0 / math.sqrt(sketch_size)
  if kind == "gaussian":
    return jax.random.normal(key, (sketch_size, n), dtype) * scale
  if kind == "rademacher":
    return jax.random.rademacher(key, (sketch_size, n), dtype) * scale
  return apply_sketch(kind, key, jnp.eye(n, dtype=dtype), sketch_size)
