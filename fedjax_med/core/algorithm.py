"""The contract every federated algorithm follows.

An algorithm is a factory that returns a `FederatedAlgorithm`, a NamedTuple of
pure functions in the spirit of optax's `GradientTransformation`:

  state = algorithm.init(rng, variables)
  state, metrics = algorithm.run_round(state, federated_data, round_rng)
  variables = algorithm.global_variables(state)

`run_round` is a pure function of arrays (the federated data is a pytree with
static metadata), so the caller jit-compiles it once and reuses it for every
round. The state is a pytree that orbax can checkpoint; anything a client
keeps between rounds lives in it with a leading `num_clients` axis.

An algorithm whose round splits into a server part, a part each client runs
on its own data, and a second server part also exposes those parts as
`RoundPieces`. `run_round` is then `engine.compose_round(pieces, ...)`: the
simulation compiles exactly the functions that a real deployment
(`fedjax_med.distributed.flower`) runs on the server and at each site.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from fedjax_med.core.client import ClientBatch
from fedjax_med.core.sampling import Cohort
from fedjax_med.data.federated_data import FederatedData

State = Any
Variables = dict[str, Any]
PyTree = Any


class RoundStart(NamedTuple):
  """Output of the server's first part of a round.

  Attributes:
    broadcast: Pytree every sampled client receives (the model it trains
      from, the round's learning rate, the clients' key, the cohort).
    cohort: The sampled clients.
    server: Pytree the server keeps for the end of the round (its own key,
      the new downlink compression state); it never reaches a client.
  """

  broadcast: PyTree
  cohort: Cohort
  server: PyTree


class RoundPieces(NamedTuple):
  """A round split where a deployment splits it.

  Attributes:
    begin: `(state, rng) -> RoundStart`, on the server.
    client: `(broadcast, batch, client_id, client_row) -> ClientOutput`
      (see `engine.ClientOutput`), run at the site whose own padded rows
      are `batch` (a `ClientBatch`); `client_row` is the site's own
      state, as `client_row` below reads it from the stacked state.
    end: `(state, start, summed, per_client) -> (state, metrics)`, on the
      server, with `summed` added up over the cohort's masked-in slots and
      `per_client` stacked over the cohort. With `per_client=None` the
      per-client rows stay where they are (at the sites) and the state's
      stacked rows are left unchanged.
    client_row: `(state, client_id) -> client_row`, the rows of the
      stacked per-client state that `client` reads; a site keeps its own
      row between rounds instead.
    update_row: `(client_row, per_client) -> client_row`, the row a site
      keeps after a round from its `ClientOutput.per_client`; the same
      update `end` scatters into the stacked state in simulation.
  """

  begin: Callable[[State, jax.Array], RoundStart]
  client: Callable[[PyTree, ClientBatch, jax.Array, PyTree], Any]
  end: Callable[
    [State, RoundStart, PyTree, PyTree | None],
    tuple[State, dict[str, jax.Array]],
  ]
  client_row: Callable[[State, jax.Array], PyTree]
  update_row: Callable[[PyTree, PyTree], PyTree]


class FederatedAlgorithm(NamedTuple):
  """Pure functions that define a federated algorithm.

  Attributes:
    init: `(rng, variables) -> state`; `variables` is the model's initial
      `{"params": ..., **model_state}`.
    run_round: `(state, data, rng) -> (state, metrics)`; `metrics` is a dict
      of scalar arrays.
    global_variables: `state -> variables` of the global model, the one
      evaluated on every client's test split and on unseen sites.
    client_variables: Optional `state -> variables` stacked over a leading
      `num_clients` axis: the model each client would deploy on its own
      data (a personal model, or the global one with local layers). None
      for algorithms whose clients use the global model; personalized
      evaluation then evaluates the global model on each site.
    pieces: Optional `RoundPieces` whose composition is `run_round`; None
      for algorithms whose round does not split this way (they run only
      in simulation).
  """

  init: Callable[[jax.Array, Variables], State]
  run_round: Callable[
    [State, FederatedData, jax.Array], tuple[State, dict[str, jax.Array]]
  ]
  global_variables: Callable[[State], Variables]
  client_variables: Callable[[State], Variables] | None = None
  pieces: RoundPieces | None = None
