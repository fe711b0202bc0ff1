"""Pytrees to Flower records and back.

A pytree travels as an `ArrayRecord` whose keys are the leaves' paths
(`jax.tree_util.keystr`, for example `['params']['Dense_0']['kernel']`) and
whose values are the leaves as numpy arrays. The receiver rebuilds the tree
from a template with the same structure, which both ends derive from the
same algorithm (`jax.eval_shape` of the piece that produced it), so the
tree structure itself never travels. Every key, shape and dtype is checked
against the template.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flwr.app import Array, ArrayRecord

PyTree = Any


def tree_to_record(tree: PyTree) -> ArrayRecord:
  """Packs a pytree of arrays into an `ArrayRecord` keyed by leaf path."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  arrays = {
    jax.tree_util.keystr(path): Array.from_numpy_ndarray(
      np.asarray(jax.device_get(leaf))
    )
    for path, leaf in leaves
  }
  return ArrayRecord(array_dict=arrays)


def record_to_tree(record: ArrayRecord, template: PyTree) -> PyTree:
  """Unpacks an `ArrayRecord` into a tree shaped like `template`.

  Args:
    record: Written by `tree_to_record`.
    template: A tree of arrays or `jax.ShapeDtypeStruct`s with the expected
      structure, shapes and dtypes.

  Returns:
    The tree, with numpy leaves.

  Raises:
    ValueError: If a key is missing or unexpected, or a leaf's shape or
      dtype differs from the template's.
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
  expected = [jax.tree_util.keystr(path) for path, _ in leaves]
  unexpected = sorted(set(record.keys()) - set(expected))
  if unexpected:
    raise ValueError(
      f"the record contains arrays {unexpected} missing from the template; "
      "both ends must build the same algorithm from the same config."
    )
  values = []
  for key, (_, like) in zip(expected, leaves, strict=True):
    if key not in record:
      raise ValueError(
        f"the record lacks the array {key}; both ends must build the same "
        "algorithm from the same config."
      )
    value = record[key].numpy()
    shape, dtype = tuple(like.shape), np.dtype(like.dtype)
    if value.shape != shape or value.dtype != dtype:
      raise ValueError(
        f"array {key} arrived with shape {value.shape} and dtype "
        f"{value.dtype}, expected {shape} and {dtype}; both ends must build "
        "the same algorithm from the same config."
      )
    values.append(value)
  return jax.tree_util.tree_unflatten(treedef, values)
