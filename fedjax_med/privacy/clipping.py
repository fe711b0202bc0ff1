"""L2 clipping and Gaussian noise for pytrees.

These are the two primitives of the Gaussian mechanism: clip every unit to an
L2 norm, sum, and add Gaussian noise to the sum. In DP-FedAvg one unit is a
client's delta, and in DP-SGD one example's gradient.

Conventions used throughout `fedjax_med.privacy`:

  * The noise multiplier `z` is relative to the L2 sensitivity of one unit
    under add/remove adjacency, which is the clip norm `C` for flat clipping
    and `sqrt(sum_l C_l^2)` for per-layer clipping. The noise added to the
    sum has standard deviation `z * sensitivity`.
  * Under replace-one adjacency the sum can move by twice the sensitivity,
    so the same noise is worth a multiplier of `z / 2` to an accountant.
  * Noise is drawn with one key per leaf, split from the caller's key. A
    single key reused across leaves would give leaves of shapes (3,) and
    (2, 3) identical leading values under JAX's partitionable threefry.
  * Clipping guarantees the bound up to float rounding: the clipped norm
    can exceed `C` by a relative error of a few float32 ulps (about 1e-7).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging
from optax import tree_utils as otu

PyTree = Any


def validate_dp_settings(clip_norm: float, noise_multiplier: float) -> None:
  """Raises ValueError for a clip norm or noise multiplier that cannot work.

  A noise multiplier of 0 is accepted with a logged warning, for
  clipping-only ablations and debugging. It gives no privacy.
  """
  if not clip_norm > 0 or not math.isfinite(clip_norm):
    raise ValueError(
      f"clip_norm={clip_norm} must be a positive finite number; set it to "
      "a bound on the L2 norm of one unit, such as 1.0."
    )
  if not noise_multiplier >= 0 or not math.isfinite(noise_multiplier):
    raise ValueError(
      f"noise_multiplier={noise_multiplier} must be a non-negative finite "
      "number; set it (e.g. 1.0) or set target_epsilon to calibrate it."
    )
  if noise_multiplier == 0:
    logging.warning(
      "noise_multiplier=0: updates are clipped but not noised, so the run "
      "has no differential privacy guarantee."
    )


# Norms below this count as zero when computing the clipping factor.
_TINY_NORM = 1e-12


def clip_factor(norm: jax.Array, clip_norm: jax.Array | float) -> jax.Array:
  """Returns `min(1, clip_norm / norm)`, which is 1 for a zero norm."""
  return jnp.minimum(1.0, clip_norm / jnp.maximum(norm, _TINY_NORM))


def clip_by_global_norm(
  tree: PyTree, clip_norm: jax.Array | float
) -> tuple[PyTree, jax.Array]:
  """Scales `tree` so that its L2 norm over all leaves is at most `clip_norm`.

  Args:
    tree: Any pytree of float arrays (one client's delta, one example's
      gradient).
    clip_norm: The bound `C`, a positive float or scalar array.

  Returns:
    `(clipped, norm)`: the scaled tree, and the norm before clipping.
  """
  norm = otu.tree_norm(tree)
  factor = clip_factor(norm, clip_norm)
  clipped = jax.tree.map(lambda leaf: (leaf * factor).astype(leaf.dtype), tree)
  return clipped, norm


def _as_threshold_tree(tree: PyTree, clip_norms: PyTree | Sequence[float]):
  """Returns per-leaf thresholds with the structure of `tree`."""
  treedef = jax.tree.structure(tree)
  if jax.tree.structure(clip_norms) == treedef:
    return clip_norms
  thresholds = list(jax.tree.leaves(clip_norms))
  if len(thresholds) != treedef.num_leaves:
    raise ValueError(
      f"{len(thresholds)} per-layer clip norms were given for a tree with "
      f"{treedef.num_leaves} leaves; pass one threshold per leaf, in "
      "jax.tree.leaves order or as a tree shaped like the parameters."
    )
  return jax.tree.unflatten(treedef, thresholds)


def clip_per_layer(
  tree: PyTree, clip_norms: PyTree | Sequence[float]
) -> tuple[PyTree, PyTree]:
  """Clips every leaf of `tree` to its own L2 bound.

  The L2 sensitivity of the clipped tree is `per_layer_sensitivity(
  clip_norms)`, the L2 norm of the thresholds. Noise for it must be sized
  by that value, not by any single threshold.

  Args:
    tree: Pytree of float arrays.
    clip_norms: One positive bound per leaf, as a tree with the structure of
      `tree` or a sequence in `jax.tree.leaves(tree)` order.

  Returns:
    `(clipped, norms)`: the clipped tree, and each leaf's norm before
    clipping (a tree of scalars).
  """
  thresholds = _as_threshold_tree(tree, clip_norms)
  norms = jax.tree.map(lambda leaf: jnp.linalg.norm(jnp.ravel(leaf)), tree)
  clipped = jax.tree.map(
    lambda leaf, norm, bound: (leaf * clip_factor(norm, bound)).astype(
      leaf.dtype
    ),
    tree,
    norms,
    thresholds,
  )
  return clipped, norms


def per_layer_sensitivity(clip_norms: PyTree | Sequence[float]) -> float:
  """Returns `sqrt(sum_l C_l^2)`, the L2 sensitivity of per-layer clipping.

  Eight layers clipped at 1.0 give `sqrt(8) = 2.828427`; thresholds
  (0.5, 1, 2) give `sqrt(5.25) = 2.291288`.

  Raises:
    ValueError: If a threshold is not positive.
  """
  thresholds = [float(c) for c in jax.tree.leaves(clip_norms)]
  for value in thresholds:
    if not value > 0:
      raise ValueError(
        f"per-layer clip norm {value} must be positive; use a bound such "
        "as 1.0."
      )
  return math.sqrt(sum(c * c for c in thresholds))


def gaussian_noise_like(
  tree: PyTree, stddev: jax.Array | float, key: jax.Array
) -> PyTree:
  """Draws `N(0, stddev^2)` noise shaped like `tree`, one key per leaf.

  Args:
    tree: Pytree whose leaf shapes and dtypes the noise takes.
    stddev: Standard deviation of every coordinate.
    key: PRNG key, split into one key per leaf so that no two leaves share
      a stream.

  Returns:
    A tree of noise with the structure, shapes and dtypes of `tree`.
  """
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  noise = [
    (stddev * jax.random.normal(k, jnp.shape(leaf))).astype(
      jnp.result_type(leaf)
    )
    for k, leaf in zip(keys, leaves, strict=True)
  ]
  return jax.tree.unflatten(treedef, noise)


def add_gaussian_noise(
  tree: PyTree, stddev: jax.Array | float, key: jax.Array
) -> PyTree:
  """Returns `tree + N(0, stddev^2)` with one independent key per leaf."""
  return otu.tree_add(tree, gaussian_noise_like(tree, stddev, key))
