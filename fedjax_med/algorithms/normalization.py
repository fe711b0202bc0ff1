"""Batch normalization layers as per-client state, for FedBN and FedStein.

The local part of a model's variables is:

  * every leaf of "params" under a module whose name starts with
    "BatchNorm" (flax names them `BatchNorm_0`, `BatchNorm_1`, ... at any
    depth): the affine `scale` and `bias`;
  * the whole "batch_stats" collection: each layer's running `mean` and
    `var`.

Everything else is shared. Local trees keep the nesting of the variables
they come from but contain only the local leaves, for example
`{"params": {"BatchNorm_0": {"scale": ..., "bias": ...}}, "batch_stats":
{"BatchNorm_0": {"mean": ..., "var": ...}}}`, so they can be stacked over
clients and checkpointed like any other state. The helpers work unchanged
on trees with a leading `num_clients` axis.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

PyTree = Any

NORMALIZATION_MODULE_PREFIX = "BatchNorm"
STATS_COLLECTION = "batch_stats"


def is_normalization_path(path: tuple[str, ...]) -> bool:
  """Tells whether a variables path belongs to a batch normalization layer.

  Args:
    path: Keys from the variables root to a leaf, for example
      `("params", "BatchNorm_0", "scale")` or
      `("batch_stats", "BatchNorm_0", "mean")`.
  """
  if not path:
    return False
  if path[0] == STATS_COLLECTION:
    return True
  modules = path[1:-1]
  return path[0] == "params" and any(
    str(name).startswith(NORMALIZATION_MODULE_PREFIX) for name in modules
  )


def _flatten(tree: PyTree) -> dict[tuple[str, ...], Any]:
  return traverse_util.flatten_dict(dict(tree)) if tree else {}


def split_variables(variables: PyTree) -> tuple[PyTree, PyTree]:
  """Splits variables into `(shared, local)` trees.

  Both keep the original nesting; a collection with no leaves on one side
  is left out of that side.
  """
  flat = _flatten(variables)
  shared = {k: v for k, v in flat.items() if not is_normalization_path(k)}
  local = {k: v for k, v in flat.items() if is_normalization_path(k)}
  return (
    traverse_util.unflatten_dict(shared),
    traverse_util.unflatten_dict(local),
  )


def local_variables(variables: PyTree) -> PyTree:
  """Returns the normalization parameters and statistics of `variables`."""
  return split_variables(variables)[1]


def merge_variables(variables: PyTree, local: PyTree) -> PyTree:
  """Returns `variables` with the leaves present in `local` replaced.

  Raises:
    ValueError: If `local` has a leaf that `variables` lacks.
  """
  flat = _flatten(variables)
  replacement = _flatten(local)
  missing = sorted("/".join(k) for k in replacement if k not in flat)
  if missing:
    raise ValueError(
      f"the local normalization leaves {missing} are not in the model's "
      "variables; build the client states from the same model."
    )
  flat.update(replacement)
  return traverse_util.unflatten_dict(flat)


def zero_normalization(params: PyTree) -> PyTree:
  """Sets the normalization leaves of a "params" tree (e.g. a delta) to 0."""
  flat = _flatten(params)
  zeroed = {
    k: jnp.zeros_like(v) if is_normalization_path(("params", *k)) else v
    for k, v in flat.items()
  }
  return traverse_util.unflatten_dict(zeroed)


def normalization_params(params: PyTree) -> PyTree:
  """Returns the normalization leaves of a "params" tree, nested as given."""
  local = local_variables({"params": params})
  return local.get("params", {})


def mean_over_clients(stacked: PyTree) -> PyTree:
  """Averages every leaf over its leading client axis, with equal weights."""
  return jax.tree.map(lambda leaf: jnp.mean(leaf, axis=0), stacked)


def check_has_normalization(variables: PyTree, method: str) -> None:
  """Raises ValueError if the model has no batch normalization layer."""
  local = local_variables(variables)
  if not jax.tree.leaves(local):
    raise ValueError(
      f"{method} keeps batch normalization layers local, but the model "
      f"has none (collections: {sorted(variables)}); use a model with "
      "batch normalization, e.g. --config.model.use_batch_norm=True for the "
      "mlp or cnn."
    )
