"""Federated averaging and the shared round of the FedAvg family.

Reference: H. B. McMahan, E. Moore, D. Ramage, S. Hampson, B. Agüera y Arcas,
"Communication-Efficient Learning of Deep Networks from Decentralized Data",
AISTATS 2017, arXiv:1602.05629.

One round: sample a cohort, run local training on every sampled client from
the current global parameters, average the deltas `w_k - w` (weighted by
`num_examples`, or uniformly over clients that hold data), and apply a server
optimizer to the negated average delta, the "pseudo-gradient" of Reddi et al.
(arXiv:2003.00295). FedAvg itself is the server optimizer `sgd(1.0)`, which
sets `w <- w + mean delta`.

Choices this implementation makes:
  * Non-trainable model state (flax "batch_stats") is averaged with the same
    weights and never passes through the server optimizer, whose state holds
    entries for "params" only.
  * A round whose cohort holds no data (an empty Poisson draw, or clients
    with no rows) leaves parameters, model state and optimizer state as they
    were.
  * The client learning rate follows a schedule over rounds evaluated inside
    the compiled round from `state.round`, so a decaying rate never triggers
    a recompilation and never restarts at the first round.
  * `client.compression` compresses every client's delta and the broadcast
    model, and each round's metrics hold the exact `uplink_bytes` and
    `downlink_bytes` summed over the cohort; `communication.py` states the
    conventions.

FedProx, SCAFFOLD and the adaptive server optimizers reuse `build_fedavg_family`
and change one piece each through `ClientHooks` or the server optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from optax import tree_utils as otu

from fedjax_med.algorithms import communication

# The settings are re-exported: every FedAvg-family module imports them here.
from fedjax_med.algorithms.settings import (
  WEIGHTINGS,
  ClientConfig,
  CohortConfig,
  Schedule,
  as_schedule,
  make_client_optimizer,
  validate_client_config,
)
from fedjax_med.core import aggregation
from fedjax_med.core import tree as tree_lib
from fedjax_med.core.aggregation import Aggregator
from fedjax_med.core.algorithm import (
  FederatedAlgorithm,
  RoundPieces,
  RoundStart,
)
from fedjax_med.core.client import (
  BatchGradient,
  ClientBatch,
  Objective,
  local_train,
)
from fedjax_med.core.engine import ClientOutput, compose_round
from fedjax_med.core.sampling import make_sampler
from fedjax_med.models.base import Model
from fedjax_med.privacy import dp_sgd

PyTree = Any


class ServerState(NamedTuple):
  """State of a FedAvg-family run.

  Attributes:
    params: Global trainable parameters.
    model_state: Global non-trainable collections (empty dict if none).
    opt_state: Server optimizer state over `params`.
    client_states: Per-client state with a leading `num_clients` axis, or
      an empty tuple for stateless clients.
    extra: Server-side algorithm state (SCAFFOLD's global control variate),
      or an empty tuple.
    aggregator_state: State of the aggregator (an adaptive clip norm, for
      example), or an empty tuple.
    round: Rounds completed, int32 scalar.
    compression: Compression state: the stacked per-client uplink states
      (error-feedback residuals) under "uplink", and the clients' copy of
      the model under "downlink" (see `communication.init_state`).
  """

  params: PyTree
  model_state: PyTree
  opt_state: optax.OptState
  client_states: PyTree
  extra: PyTree
  aggregator_state: PyTree
  round: jax.Array
  compression: PyTree = ()


class ClientContext(NamedTuple):
  """Inputs of a client's hooks in one round.

  Attributes:
    client_id: The client's index in the population.
    batch: The client's padded training rows.
    key: A key for the hooks' own randomness, independent of the keys of
      local training and aggregation.
    params: Global parameters at the start of the round, as the client
      received them (the decoded broadcast under downlink compression).
    model_state: Global non-trainable state at the start of the round.
    client_state: This client's row of the stacked client states.
    extra: Server-side algorithm state.
    learning_rate: This round's client learning rate.
    round: Rounds completed before this one.
  """

  client_id: jax.Array
  batch: ClientBatch
  key: jax.Array
  params: PyTree
  model_state: PyTree
  client_state: PyTree
  extra: PyTree
  learning_rate: jax.Array
  round: jax.Array


class ClientUpdate(NamedTuple):
  """A client's message to the server, before aggregator post-processing.

  Attributes:
    delta: Update over the global parameters' tree (`local - global` by
      default); the aggregator averages it.
    weight: Aggregation weight (examples, or 1 for a client with data).
    client_state: The client's new row of the stacked client states.
    contribution: Summed over the cohort without weights, for
      `update_extra`.
  """

  delta: PyTree
  weight: jax.Array
  client_state: PyTree
  contribution: PyTree


class ClientHooks(NamedTuple):
  """Pieces an algorithm may swap in the FedAvg round (all optional).

  Attributes:
    init_client_states: `(params, num_clients) -> stacked client states`.
    init_extra: `params -> server-side extra state`.
    regularizer: `(global_params, client_state, extra) -> (params -> scalar)`,
      the term added to every local step's loss.
    update_client_state: `(client_state, global_params, local_params, extra,
      num_steps, learning_rate) -> (new_client_state, summed_contribution)`;
      the contribution is summed over the cohort without weights.
    update_extra: `(extra, summed_contribution, num_clients) -> extra`.
    batch_gradient: Replaces each local step's batch sampling and data
      gradient (see `local_train`); FEDTAIL's sharpness-aware step uses it.
      It cannot be combined with DP-SGD, which replaces the same piece.
    start_variables: `ClientContext -> variables` local training starts
      from; the global variables by default. FedBN puts the client's own
      normalization layers in.
    objective: `ClientContext -> Objective` (see `core.client`), replacing
      the local step objective (MOON, UniVarFL).
    finish: `(ClientContext, LocalResult, ClientUpdate) -> ClientUpdate`,
      called after local training with the default update (the delta from
      the global parameters, the weight, and the client state and
      contribution of `update_client_state`); it returns the update to
      send. When local training runs on a tree other than the global
      parameters' (pFedHN trains generated weights), the default delta is
      None and `finish` must supply one shaped like the global parameters.
    aggregate_model_state: `(mean_model_state, server_state) ->
      model_state`, applied to the weighted mean of the clients'
      non-trainable state (FedStein shrinks it).
    extra_uplink_bytes: Bytes each client with data sends beyond what the
      round counts itself (see `communication.py`).
    extra_downlink_bytes: Bytes each sampled client receives beyond what
      the round counts itself.
  """

  init_client_states: Callable[[PyTree, int], PyTree] | None = None
  init_extra: Callable[[PyTree], PyTree] | None = None
  regularizer: Callable[..., Callable[[PyTree], jax.Array]] | None = None
  update_client_state: Callable[..., tuple[PyTree, PyTree]] | None = None
  update_extra: Callable[[PyTree, PyTree, int], PyTree] | None = None
  batch_gradient: BatchGradient | None = None
  start_variables: Callable[[ClientContext], PyTree] | None = None
  objective: Callable[[ClientContext], Objective] | None = None
  finish: Callable[..., ClientUpdate] | None = None
  aggregate_model_state: Callable[[PyTree, Any], PyTree] | None = None
  extra_uplink_bytes: int = 0
  extra_downlink_bytes: int = 0


def build_fedavg_family(
  model: Model,
  num_clients: int,
  *,
  client: ClientConfig,
  cohort: CohortConfig,
  server_optimizer: optax.GradientTransformation,
  hooks: ClientHooks | None = None,
  aggregator: Aggregator | None = None,
  dataset_name: str = "the dataset",
) -> FederatedAlgorithm:
  """Builds a FedAvg-family algorithm from its pieces.

  Args:
    model: The network.
    num_clients: Clients in the population (the data's client axis).
    client: Local training settings.
    cohort: Cohort sampling, chunking and weighting.
    server_optimizer: Applied to the negated average delta each round.
    hooks: Algorithm-specific pieces; the defaults give plain FedAvg.
    aggregator: Per-client post-processing and the round's aggregation;
      defaults to the weighted mean.
    dataset_name: Used in error messages.

  Returns:
    The algorithm's pure functions.
  """
  validate_client_config(client)
  hooks = hooks or ClientHooks()
  aggregator = aggregator or aggregation.weighted_mean()
  if cohort.weighting not in WEIGHTINGS:
    raise ValueError(
      f"weighting={cohort.weighting!r} is unknown; use one of {WEIGHTINGS}."
    )
  client_schedule = as_schedule(client.learning_rate, "client learning_rate")
  batch_gradient = hooks.batch_gradient
  if client.dp_sgd is not None:
    if batch_gradient is not None:
      raise ValueError(
        "DP-SGD and this algorithm's own local gradient step both replace "
        "the batch gradient of local training; use privacy.mode='client' "
        "or 'none' with this algorithm."
      )
    batch_gradient = dp_sgd.make_batch_gradient(
      client.dp_sgd, client.batch_size
    )
  sampler = make_sampler(
    cohort.sampling,
    num_clients,
    cohort.clients_per_round,
    cohort.poisson_rate,
    dataset_name,
  )

  def init(rng, variables):
    del rng  # Initialization is deterministic given the variables.
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    client_states = ()
    if hooks.init_client_states is not None:
      client_states = hooks.init_client_states(params, num_clients)
    extra = () if hooks.init_extra is None else hooks.init_extra(params)
    return ServerState(
      params=params,
      model_state=model_state,
      opt_state=server_optimizer.init(params),
      client_states=client_states,
      extra=extra,
      aggregator_state=aggregator.init(params),
      round=jnp.zeros((), jnp.int32),
      compression=communication.init_state(
        client.compression, params, num_clients
      ),
    )

  def begin(state: ServerState, rng: jax.Array) -> RoundStart:
    sample_key, clients_key = jax.random.split(rng)
    # fold_in(rng, i) equals split(rng)[i] for i < 2, so 2 is a fresh stream.
    server_key = jax.random.fold_in(rng, 2)
    cohort_sample = sampler(sample_key)
    # Clients train from the model they decode; the server keeps its own.
    received, downlink_state, _ = communication.broadcast(
      client.compression,
      state.params,
      state.compression["downlink"],
      jax.random.fold_in(rng, 3),
    )
    broadcast = {
      "params": received,
      "model_state": state.model_state,
      "extra": state.extra,
      "aggregator_state": state.aggregator_state,
      "learning_rate": client_schedule(state.round),
      "round": state.round,
      "clients_key": clients_key,
      "cohort": cohort_sample,
    }
    server = {"key": server_key, "downlink": downlink_state}
    return RoundStart(broadcast, cohort_sample, server)

  def client_row(state: ServerState, client_id: jax.Array):
    return {
      "client_state": tree_lib.gather_rows(state.client_states, client_id),
      "uplink": tree_lib.gather_rows(state.compression["uplink"], client_id),
    }

  def update_row(row, per_client):
    # As in `end`: the client state is replaced, the uplink residual only
    # when the client sent a delta.
    return {
      "client_state": per_client["client_state"],
      "uplink": otu.tree_where(
        per_client["sent"], per_client["uplink_state"], row["uplink"]
      ),
    }

  def client_update(broadcast, batch: ClientBatch, client_id, row):
    received = broadcast["params"]
    model_state = broadcast["model_state"]
    extra = broadcast["extra"]
    learning_rate = broadcast["learning_rate"]
    cohort_sample = broadcast["cohort"]
    optimizer = make_client_optimizer(client, learning_rate)
    variables = {"params": received, **model_state}
    client_state = row["client_state"]
    client_key = jax.random.fold_in(broadcast["clients_key"], client_id)
    # local_train uses split(client_key); the aggregator fold_in(.., 2).
    context = ClientContext(
      client_id=client_id,
      batch=batch,
      key=jax.random.fold_in(client_key, 3),
      params=received,
      model_state=model_state,
      client_state=client_state,
      extra=extra,
      learning_rate=learning_rate,
      round=broadcast["round"],
    )
    regularizer = None
    if hooks.regularizer is not None:
      regularizer = hooks.regularizer(received, client_state, extra)
    start = variables
    if hooks.start_variables is not None:
      start = hooks.start_variables(context)
    objective = None
    if hooks.objective is not None:
      objective = hooks.objective(context)
    result = local_train(
      model,
      start,
      batch,
      client_key,
      optimizer=optimizer,
      num_steps=client.num_local_steps,
      batch_size=client.batch_size,
      regularizer=regularizer,
      loss_fn=client.loss_fn,
      batch_gradient=batch_gradient,
      objective=objective,
    )

    new_client_state, contribution = (), ()
    if hooks.update_client_state is not None:
      new_client_state, contribution = hooks.update_client_state(
        client_state,
        received,
        result.params,
        extra,
        client.num_local_steps,
        learning_rate,
      )

    n = batch.num_examples.astype(jnp.float32)
    if cohort.weighting == "example":
      weight = n
    else:
      weight = (n > 0).astype(jnp.float32)
    # Local training may run on another tree than the global parameters
    # (weights generated by a hypernetwork); `finish` then sets the delta.
    delta = None
    if jax.tree.structure(result.params) == jax.tree.structure(received):
      delta = otu.tree_sub(result.params, received)
    update = ClientUpdate(
      delta=delta,
      weight=weight,
      client_state=new_client_state,
      contribution=contribution,
    )
    if hooks.finish is not None:
      update = hooks.finish(context, result, update)
    if update.delta is None:
      raise ValueError(
        "local training returned parameters whose tree differs from the "
        "global parameters; an algorithm whose start_variables changes "
        "the tree must compute the delta in its finish hook."
      )
    weight = update.weight
    # The received model has the global parameters' tree, which is all
    # compress_delta reads from them.
    sent_delta, uplink_row, uplink_payload_bytes = communication.compress_delta(
      client.compression,
      update.delta,
      received,
      row["uplink"],
      jax.random.fold_in(client_key, 4),
    )
    uplink_bytes = (
      uplink_payload_bytes
      + communication.dense_bytes(
        weight, update.contribution, result.model_state
      )
      + hooks.extra_uplink_bytes
    )
    delta, agg_weight, agg_extra = aggregator.postprocess(
      sent_delta,
      weight,
      broadcast["aggregator_state"],
      jax.random.fold_in(client_key, 2),
      client_id=client_id,
      cohort=cohort_sample,
    )
    summed = {
      "weighted_delta": otu.tree_scale(agg_weight, delta),
      "aggregation_weight": agg_weight,
      "aggregation_extra": agg_extra,
      "weighted_model_state": otu.tree_scale(weight, result.model_state),
      "weighted_loss": weight * result.mean_loss,
      "weight": weight,
      "num_examples": n,
      "contribution": update.contribution,
      "uplink_bytes": communication.byte_count(
        uplink_bytes, n > 0, cohort_sample.client_ids.shape[0]
      ),
    }
    per_client = {
      "client_state": update.client_state,
      "uplink_state": uplink_row,
      "sent": n > 0,
    }
    return ClientOutput(summed, per_client)

  def end(state: ServerState, start: RoundStart, summed, per_client):
    cohort_sample = start.cohort
    # Aggregate, then step the server optimizer on the pseudo-gradient.
    cohort_size = jnp.sum(cohort_sample.mask.astype(jnp.int32))
    finalized = aggregator.finalize(
      summed["weighted_delta"],
      summed["aggregation_weight"],
      summed["aggregation_extra"],
      cohort_size,
      state.aggregator_state,
      start.server["key"],
    )
    mean_delta = finalized.mean_delta
    chex.assert_trees_all_equal_shapes_and_dtypes(mean_delta, state.params)
    step = finalized.apply_update
    updates, opt_state = server_optimizer.update(
      otu.tree_scale(-1.0, mean_delta), state.opt_state, state.params
    )
    params = optax.apply_updates(state.params, updates)
    params = otu.tree_where(step, params, state.params)
    opt_state = otu.tree_where(step, opt_state, state.opt_state)

    # Normalization statistics: the weighted mean over clients with data.
    total = summed["weight"]
    has_data = total > 0
    inverse = jnp.where(has_data, 1.0 / jnp.maximum(total, 1e-12), 0.0)
    mean_model_state = otu.tree_scale(inverse, summed["weighted_model_state"])
    if hooks.aggregate_model_state is not None:
      mean_model_state = hooks.aggregate_model_state(mean_model_state, state)
    model_state = otu.tree_where(
      has_data & step, mean_model_state, state.model_state
    )

    client_states = state.client_states
    uplink_states = state.compression["uplink"]
    if per_client is not None:
      client_states = tree_lib.scatter_rows(
        state.client_states,
        cohort_sample.client_ids,
        per_client["client_state"],
        cohort_sample.mask,
      )
      uplink_states = tree_lib.scatter_rows(
        state.compression["uplink"],
        cohort_sample.client_ids,
        per_client["uplink_state"],
        cohort_sample.mask & per_client["sent"],
      )
    downlink_bytes = (
      communication.broadcast_bytes(client.compression, state.params)
      + communication.dense_bytes(state.model_state, state.extra)
      + hooks.extra_downlink_bytes
    )
    extra = state.extra
    if hooks.update_extra is not None:
      extra = hooks.update_extra(extra, summed["contribution"], num_clients)

    new_state = ServerState(
      params=params,
      model_state=model_state,
      opt_state=opt_state,
      client_states=client_states,
      extra=extra,
      aggregator_state=finalized.state,
      round=state.round + 1,
      compression={
        "uplink": uplink_states,
        "downlink": start.server["downlink"],
      },
    )
    metrics = {
      "train_loss": summed["weighted_loss"] * inverse,
      "cohort_size": cohort_size,
      "cohort_examples": summed["num_examples"],
      "client_learning_rate": start.broadcast["learning_rate"],
      "delta_norm": otu.tree_norm(mean_delta),
      "uplink_bytes": summed["uplink_bytes"],
      "downlink_bytes": communication.byte_count(
        downlink_bytes, cohort_size, cohort_sample.client_ids.shape[0]
      ),
      **finalized.metrics,
    }
    return new_state, metrics

  pieces = RoundPieces(
    begin=begin,
    client=client_update,
    end=end,
    client_row=client_row,
    update_row=update_row,
  )
  run_round = compose_round(pieces, cohort.clients_per_chunk, cohort.mesh)

  def global_variables(state: ServerState):
    return {"params": state.params, **state.model_state}

  return FederatedAlgorithm(init, run_round, global_variables, pieces=pieces)


def fedavg(
  model: Model,
  num_clients: int,
  *,
  client: ClientConfig,
  cohort: CohortConfig,
  server_learning_rate: float | Schedule = 1.0,
  aggregator: Aggregator | None = None,
  dataset_name: str = "the dataset",
) -> FederatedAlgorithm:
  """FedAvg: server step `w <- w + server_learning_rate * mean delta`.

  `aggregator` replaces the weighted mean (for example with the DP-FedAvg
  aggregator of `fedjax_med.privacy.dp_aggregation`).
  """
  schedule = as_schedule(server_learning_rate, "server learning_rate")
  return build_fedavg_family(
    model,
    num_clients,
    client=client,
    cohort=cohort,
    server_optimizer=optax.sgd(schedule),
    aggregator=aggregator,
    dataset_name=dataset_name,
  )
