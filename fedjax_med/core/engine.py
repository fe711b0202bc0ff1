"""Chunked, vmapped evaluation of a client function over a cohort.

`map_cohort` runs `client_fn` for every slot of a cohort in chunks of
`clients_per_chunk`: `lax.scan` walks the chunks, `vmap` runs the clients of
one chunk together, and a running sum carries the aggregate. Peak memory is
that of one chunk, whatever the cohort size. Each client's result depends
only on its id and the broadcast inputs, never on the chunk it lands in; the
aggregate is a floating-point sum, so changing the chunk size changes it only
by rounding.

With a `mesh`, the cohort's slots are split over the mesh's client axis
(`shard_map`): every device runs the chunked scan over its own block of
slots and `lax.psum` adds the per-device sums. The same holds for a mesh
over the devices of several processes (see `fedjax_med.distributed`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from fedjax_med.core import tree as tree_lib
from fedjax_med.core.algorithm import RoundPieces
from fedjax_med.core.client import ClientBatch
from fedjax_med.core.sampling import Cohort

PyTree = Any


class ClientOutput(NamedTuple):
  """What one client returns to `map_cohort`.

  Attributes:
    summed: Pytree added up over the cohort's masked-in slots (for example
      `weight * delta` and `weight`).
    per_client: Pytree kept per slot, stacked to `[capacity, ...]` (for
      example a new client state or a per-client metric).
  """

  summed: PyTree
  per_client: PyTree


def num_chunks(capacity: int, clients_per_chunk: int) -> int:
  """Number of chunks that cover `capacity` slots."""
  return -(-capacity // clients_per_chunk)


def resolve_chunk_size(clients_per_chunk: int | None, capacity: int) -> int:
  """Returns the chunk size, defaulting to the whole cohort.

  Raises:
    ValueError: If `clients_per_chunk` is not positive.
  """
  if clients_per_chunk is None or clients_per_chunk == 0:
    return capacity
  if clients_per_chunk < 0:
    raise ValueError(
      f"clients_per_chunk={clients_per_chunk} must be positive; use 0 or "
      "None to process the whole cohort in one chunk."
    )
  return min(clients_per_chunk, capacity)


def map_cohort(
  client_fn: Callable[[jax.Array], ClientOutput],
  cohort: Cohort,
  clients_per_chunk: int | None = None,
  mesh: Mesh | None = None,
) -> tuple[PyTree, PyTree]:
  """Runs `client_fn(client_id)` over the cohort in chunks.

  Args:
    client_fn: Pure function of a scalar client id. It closes over the
      broadcast inputs (server parameters, the federated data, stacked
      client states, the round key) and gathers its own rows.
    cohort: Client ids and mask, shape `[capacity]`.
    clients_per_chunk: Clients vmapped together on each device; None or 0
      means all of a device's slots at once.
    mesh: A one-axis mesh whose axis splits the cohort's slots (see
      `sharding.client_mesh`), or None to run on the default device.

  Returns:
    `(summed, per_client)`: the sum of `ClientOutput.summed` over slots with
    `cohort.mask`, and `ClientOutput.per_client` stacked to
    `[capacity, ...]` in slot order (padding slots hold values for a
    repeated client and must be ignored through the mask). Under a mesh,
    `per_client` is sharded over the client axis and `summed` replicated.
  """
  chex.assert_rank(cohort.client_ids, 1)
  chex.assert_equal_shape([cohort.client_ids, cohort.mask])
  capacity = cohort.client_ids.shape[0]
  if mesh is None:
    chunk = resolve_chunk_size(clients_per_chunk, capacity)
    padded = num_chunks(capacity, chunk) * chunk
    ids, mask = _pad_cohort(cohort, padded)
    summed, per_client = _scan_chunks(client_fn, ids, mask, chunk)
  else:
    axis = _client_axis(mesh)
    num_devices = mesh.shape[axis]
    per_device = num_chunks(capacity, num_devices)
    chunk = resolve_chunk_size(clients_per_chunk, per_device)
    padded = num_devices * num_chunks(per_device, chunk) * chunk
    ids, mask = _pad_cohort(cohort, padded)

    def device_fn(device_ids, device_mask):
      summed, per_client = _scan_chunks(
        client_fn, device_ids, device_mask, chunk
      )
      return jax.lax.psum(summed, axis), per_client

    summed, per_client = jax.shard_map(
      device_fn,
      mesh=mesh,
      in_specs=(P(axis), P(axis)),
      out_specs=(P(), P(axis)),
      # With check_vma, the broadcast inputs that client_fn closes over
      # are invariant across devices, and the gradient of a client's loss
      # with respect to them would be psummed over every device's clients.
      # NOTE: differentiating through map_cohort itself under a mesh (a
      # gradient of the aggregate) is untested.
      check_vma=False,
    )(ids, mask)
  per_client = jax.tree.map(lambda leaf: leaf[:capacity], per_client)
  return summed, per_client


def _client_axis(mesh: Mesh) -> str:
  if len(mesh.axis_names) != 1:
    raise ValueError(
      f"mesh has axes {mesh.axis_names}; map_cohort splits the cohort over "
      "a one-axis mesh, such as sharding.client_mesh(num_devices)."
    )
  return mesh.axis_names[0]


def _pad_cohort(cohort: Cohort, padded: int) -> tuple[jax.Array, jax.Array]:
  # Padding slots run client 0 with mask False, so they add nothing.
  extra = padded - cohort.client_ids.shape[0]
  return jnp.pad(cohort.client_ids, (0, extra)), jnp.pad(
    cohort.mask, (0, extra)
  )


def _scan_chunks(
  client_fn: Callable[[jax.Array], ClientOutput],
  ids: jax.Array,
  mask: jax.Array,
  chunk: int,
) -> tuple[PyTree, PyTree]:
  """Sums `client_fn` over `[padded]` slots with a scan over chunks."""
  padded = ids.shape[0]
  chunks = padded // chunk
  ids = ids.reshape(chunks, chunk)
  mask = mask.reshape(chunks, chunk)

  vmapped = jax.vmap(client_fn)
  abstract = jax.eval_shape(vmapped, ids[0])
  zeros = jax.tree.map(
    lambda s: jnp.zeros(s.shape[1:], s.dtype), abstract.summed
  )

  def body(total, chunk_inputs):
    chunk_ids, chunk_mask = chunk_inputs
    out = vmapped(chunk_ids)
    chunk_sum = tree_lib.masked_sum(out.summed, chunk_mask)
    # Under jax_enable_x64 a sum of int32 leaves is int64; keep the carry's
    # dtype so that the scan's carry types match.
    total = jax.tree.map(lambda t, c: t + c.astype(t.dtype), total, chunk_sum)
    return total, out.per_client

  summed, per_client = jax.lax.scan(body, zeros, (ids, mask))
  per_client = jax.tree.map(
    lambda leaf: leaf.reshape(padded, *leaf.shape[2:]), per_client
  )
  return summed, per_client


def compose_round(
  pieces: RoundPieces,
  clients_per_chunk: int | None = None,
  mesh: Mesh | None = None,
) -> Callable:
  """Returns `run_round(state, data, rng)` built from a round's pieces.

  The round is `pieces.begin`, then `pieces.client` for every cohort slot
  under `map_cohort` (each slot reads its client's rows of `data.train` and
  of the stacked state), then `pieces.end` on the sums.

  Args:
    pieces: The algorithm's server and client parts.
    clients_per_chunk: Clients vmapped together (see `map_cohort`).
    mesh: The mesh that splits the cohort's slots (see `map_cohort`).
  """

  def run_round(state, data, rng):
    data = jax.tree.map(jnp.asarray, data)  # Host arrays work unjitted too.
    start = pieces.begin(state, rng)

    def client_fn(client_id):
      batch = ClientBatch(
        x=data.train.x[client_id],
        y=data.train.y[client_id],
        num_examples=data.train.num_examples[client_id],
      )
      row = pieces.client_row(state, client_id)
      return pieces.client(start.broadcast, batch, client_id, row)

    summed, per_client = map_cohort(
      client_fn, start.cohort, clients_per_chunk, mesh
    )
    return pieces.end(state, start, summed, per_client)

  return run_round
