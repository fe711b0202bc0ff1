"""A round run as separate sites run it, without a network in between.

`run_round` of an algorithm with `RoundPieces` compiles `begin`, every
client's `client` and `end` into one program. A deployment runs the same
three functions in different places: `begin` and `end` on the server, and
`client` at each site on the site's own rows and its own per-client row.
This module runs that split in one process, with jitted pieces, a Python
loop over the cohort and the per-client rows kept in a dict per site. The
Flower apps (`fedjax_med.distributed.flower`) do the same with messages in
between; tests compare both against the compiled round.

The sites' `summed` trees are added in float64 in cohort order and cast
back to each leaf's dtype, so the result differs from the compiled round's
float32 sum only by rounding.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from fedjax_med.core.algorithm import FederatedAlgorithm, RoundPieces
from fedjax_med.core.client import ClientBatch

PyTree = Any


def require_pieces(algorithm: FederatedAlgorithm, name: str) -> RoundPieces:
  """Returns the algorithm's round pieces.

  Raises:
    ValueError: If the algorithm's round does not split into pieces.
  """
  if algorithm.pieces is None:
    raise ValueError(
      f"algorithm {name!r} does not split its round into server and client "
      "pieces (FederatedAlgorithm.pieces is None), so it runs only in "
      "simulation; deploy an algorithm built on build_fedavg_family, such "
      "as fedavg, fedprox, scaffold or fedadam."
    )
  return algorithm.pieces


def jit_pieces(pieces: RoundPieces) -> RoundPieces:
  """Returns the pieces jit-compiled, each once per input shape."""
  return RoundPieces(
    begin=jax.jit(pieces.begin),
    client=jax.jit(pieces.client),
    end=jax.jit(pieces.end),
    client_row=jax.jit(pieces.client_row),
    update_row=jax.jit(pieces.update_row),
  )


def sum_trees(trees: list[PyTree]) -> PyTree:
  """Adds up trees of equal structure in float64, in list order.

  Returns numpy leaves with the dtype of the first tree's leaves.

  Raises:
    ValueError: If `trees` is empty.
  """
  if not trees:
    raise ValueError("sum_trees needs at least one tree; the cohort is empty.")

  def total(*leaves):
    out = np.zeros(np.shape(leaves[0]), np.float64)
    for leaf in leaves:
      out = out + np.asarray(leaf, np.float64)
    return out.astype(np.asarray(leaves[0]).dtype)

  return jax.tree.map(total, *trees)


def cohort_members(cohort) -> list[int]:
  """Returns the ids of the cohort's masked-in slots, in slot order."""
  ids = np.asarray(cohort.client_ids)
  mask = np.asarray(cohort.mask)
  return [int(i) for i, m in zip(ids, mask, strict=True) if m]


def run_round_at_sites(
  pieces: RoundPieces,
  state: PyTree,
  rng: jax.Array,
  batches: dict[int, ClientBatch],
  rows: dict[int, PyTree],
) -> tuple[PyTree, dict, dict[int, PyTree]]:
  """Runs one round split between a server and its sites.

  Args:
    pieces: The algorithm's pieces (jitted with `jit_pieces`, or not).
    state: The server's state; its stacked per-client rows are not read.
    rng: The round's key, as for `run_round`.
    batches: Each site's padded rows, keyed by client id.
    rows: Each site's per-client row, keyed by client id; read with
      `pieces.client_row` from the initial state.

  Returns:
    `(state, metrics, rows)`: the server's new state, the round's metrics,
    and the sites' rows after the round (rows of sites outside the cohort
    unchanged). The server's stacked rows stay at their initial values.

  Raises:
    ValueError: If the cohort is empty (every slot masked out).
  """
  start = pieces.begin(state, rng)
  members = cohort_members(start.cohort)
  summed = []
  rows = dict(rows)
  for client_id in members:
    out = pieces.client(
      start.broadcast,
      batches[client_id],
      np.int32(client_id),
      rows[client_id],
    )
    summed.append(out.summed)
    rows[client_id] = pieces.update_row(rows[client_id], out.per_client)
  state, metrics = pieces.end(state, start, sum_trees(summed), None)
  return state, metrics, rows
