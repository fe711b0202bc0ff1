"""Compressed messages and exact byte counts of the FedAvg round.

Uplink: each client's delta (after the algorithm's `finish` hook) is
compressed with `CompressionConfig.uplink` inside the compiled round, and
the aggregator receives the reconstruction, so clipping, noise and the
weighted mean act on what the server would decode. With error feedback the
residual is client state, stacked over the population in
`ServerState.compression["uplink"]` and written back only for clients that
sent a delta.

Downlink: clients hold a copy `w_hat` of the global model. Each round the
server sends `C(w - w_hat)`, the change since the last broadcast plus what
earlier compressed broadcasts left out, and both sides set
`w_hat <- w_hat + decompress(payload)`. Clients train from `w_hat` and
their deltas are taken from it, while the server keeps and updates its exact
`w`. `w_hat` starts at the initial model, which every site builds from the
run's seed, so that model is not counted. Every client is assumed to hear
every broadcast, which holds when the whole population trains each round
(as on Fed-Heart-Disease); a client that skipped rounds would first need the
broadcasts it missed.

Bytes per client, from the arrays' real shapes and dtypes (see
`fedjax_med.compression.payload` for packed integers):
  * uplink, for each client with data: the delta's payload, the aggregation
    weight (one float32), the `contribution` the algorithm sums over the
    cohort (SCAFFOLD's control-variate change, AFL's loss), the
    non-trainable model state (averaged like the delta), and the hook's
    `extra_uplink_bytes`;
  * downlink, for each sampled client: the broadcast payload, the model
    state, the server-side `extra` state (SCAFFOLD's control variate), and
    `extra_downlink_bytes`.
Logged training losses and simulation bookkeeping are not counted.

Privacy: under client-level DP the aggregator clips and noises the decoded
delta, so compression is processing on the client before the mechanism and
the guarantee is unchanged; the error-feedback residual never leaves the
client. Uplink compression with secure aggregation is rejected when the
config is read (`registry.compression_config`), because the secure sum
needs equal-length ring vectors and already quantizes them.
NOTE: under secure aggregation the uplink count is the float32 delta, which
equals the masked ring input only for `secagg_bits=32`; the key exchange and
secret shares of the protocol are not counted.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from optax import tree_utils as otu

from fedjax_med.algorithms.settings import CompressionConfig
from fedjax_med.compression.operators import identity, is_identity
from fedjax_med.compression.payload import payload_bytes, shapes_of
from fedjax_med.core import tree as tree_lib

PyTree = Any

# Byte totals above this are logged as float32 (exact up to 2**24) because
# int32 would overflow; this process runs JAX without 64-bit integers.
_INT32_MAX = 2**31 - 1


def uplink_compressor(config: CompressionConfig):
  """Returns the uplink compressor, the identity when none is set."""
  return config.uplink if config.uplink is not None else identity()


def init_state(config: CompressionConfig, params, num_clients: int):
  """Returns `{"uplink": stacked client states, "downlink": ...}`.

  The uplink entry is an empty tuple for stateless compressors, the
  downlink entry an empty tuple when the model is broadcast uncompressed.
  """
  uplink = uplink_compressor(config).init(params)
  if jax.tree.leaves(uplink):
    uplink = tree_lib.stack_trees(uplink, num_clients)
  downlink = ()
  if not is_identity(config.downlink):
    downlink = {"model": params, "state": config.downlink.init(params)}
  return {"uplink": uplink, "downlink": downlink}


def broadcast_bytes(config: CompressionConfig, params) -> int:
  """Returns the payload bytes of one client's copy of the broadcast."""
  if is_identity(config.downlink):
    return payload_bytes(shapes_of(params))
  return config.downlink.num_bytes(shapes_of(params))


def broadcast(config: CompressionConfig, params, state, key):
  """Returns `(model the clients receive, new downlink state, bytes)`.

  `bytes` is the payload of one client's copy, a Python int.
  """
  if is_identity(config.downlink):
    return params, state, broadcast_bytes(config, params)
  change = otu.tree_sub(params, state["model"])
  payload, inner = config.downlink.compress(key, change, state["state"])
  received = otu.tree_add(state["model"], config.downlink.decompress(payload))
  received = jax.tree.map(lambda r, p: r.astype(p.dtype), received, params)
  num_bytes = broadcast_bytes(config, params)
  return received, {"model": received, "state": inner}, num_bytes


def compress_delta(config: CompressionConfig, delta, params, client_state, key):
  """Returns `(decoded delta, client's new uplink state, payload bytes)`.

  Raises:
    ValueError: If a stateful compressor (error feedback) meets a delta
      whose tree differs from the global parameters'.
  """
  compressor = uplink_compressor(config)
  if jax.tree.leaves(client_state):
    if jax.tree.structure(delta) != jax.tree.structure(params):
      raise ValueError(
        "uplink error feedback keeps a residual shaped like the global "
        "parameters, but this algorithm sends a delta with another tree "
        f"({jax.tree.structure(delta)}); set "
        "compression.uplink.error_feedback=False."
      )
  payload, client_state = compressor.compress(key, delta, client_state)
  num_bytes = compressor.num_bytes(shapes_of(delta))
  return compressor.decompress(payload), client_state, num_bytes


def dense_bytes(*trees) -> int:
  """Returns the bytes of trees sent uncompressed."""
  return sum(payload_bytes(shapes_of(tree)) for tree in trees)


def byte_count(per_client: int, senders: jax.Array, capacity: int):
  """Returns `per_client * senders` as int32, or float32 if it may overflow.

  `capacity` bounds `senders`; the float32 fallback is exact only up to
  2**24 bytes.
  """
  if per_client * capacity <= _INT32_MAX:
    return jnp.int32(per_client) * senders.astype(jnp.int32)
  return jnp.float32(per_client) * senders.astype(jnp.float32)
