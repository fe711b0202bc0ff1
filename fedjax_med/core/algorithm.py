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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from fedjax_med.data.federated_data import FederatedData

State = Any
Variables = dict[str, Any]


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
  """

  init: Callable[[jax.Array, Variables], State]
  run_round: Callable[
    [State, FederatedData, jax.Array], tuple[State, dict[str, jax.Array]]
  ]
  global_variables: Callable[[State], Variables]
  client_variables: Callable[[State], Variables] | None = None
