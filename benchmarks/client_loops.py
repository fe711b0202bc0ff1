"""Per-client loop baselines for the round-throughput benchmark.

Two Python loops over the cohort run the same FedAvg round as the compiled
engine (same cohort, client keys, batches, client SGD and server step):

  * `make_loop_round`: one jit-compiled call of `local_train` per client,
    all of its local steps inside. This is stronger than FedJAX's default
    engine, and it bounds what per-client dispatch alone costs.
  * `make_step_loop_round`: the design of FedJAX's default engine
    (`fedjax.core.for_each_client.ForEachClientJitBackend`): jit-compiled
    client init, client step and client final functions, with Python loops
    over the clients and over each client's batches, which are sliced from
    host arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax import tree_utils as otu

from fedjax_med import losses
from fedjax_med.algorithms.fedavg import ClientConfig
from fedjax_med.core.client import ClientBatch, batch_indices, local_train
from fedjax_med.core.sampling import make_sampler
from fedjax_med.data.federated_data import ClientArrays
from fedjax_med.models.base import Model


def _mean_delta(deltas, weights):
  weights = jnp.stack(weights)
  return jax.tree.map(
    lambda *leaves: (
      jnp.tensordot(weights, jnp.stack(leaves), axes=1) / jnp.sum(weights)
    ),
    *deltas,
  )


def make_loop_round(
  model: Model,
  num_clients: int,
  client: ClientConfig,
  clients_per_round: int,
  server_optimizer: optax.GradientTransformation,
) -> Callable[..., tuple[Any, Any]]:
  """Builds FedAvg as a Python loop over jit-compiled client updates.

  The round draws its cohort and client keys exactly as `fedavg`'s
  `run_round` does, so both give the same clients the same keys. It supports
  stateless models and the plain SGD client optimizer only.

  Returns:
    `run_round(params, opt_state, train, rng) -> (params, opt_state)`, where
    `train` is the stacked train split with a leading client axis.
  """
  sampler = jax.jit(make_sampler("uniform", num_clients, clients_per_round))
  optimizer = optax.sgd(client.learning_rate)

  @jax.jit
  def client_update(params, train: ClientArrays, client_id, clients_key):
    batch = ClientBatch(
      x=train.x[client_id],
      y=train.y[client_id],
      num_examples=train.num_examples[client_id],
    )
    result = local_train(
      model,
      {"params": params},
      batch,
      jax.random.fold_in(clients_key, client_id),
      optimizer=optimizer,
      num_steps=client.num_local_steps,
      batch_size=client.batch_size,
    )
    delta = otu.tree_sub(result.params, params)
    return delta, batch.num_examples.astype(jnp.float32)

  def run_round(params, opt_state, train: ClientArrays, rng):
    sample_key, clients_key = jax.random.split(rng)
    client_ids = np.asarray(sampler(sample_key).client_ids)

    deltas, weights = [], []
    for client_id in client_ids:
      delta, weight = client_update(params, train, client_id, clients_key)
      deltas.append(delta)
      weights.append(weight)

    updates, opt_state = server_optimizer.update(
      otu.tree_scale(-1.0, _mean_delta(deltas, weights)), opt_state, params
    )
    return optax.apply_updates(params, updates), opt_state

  return run_round


def make_step_loop_round(
  model: Model,
  num_clients: int,
  client: ClientConfig,
  clients_per_round: int,
  server_optimizer: optax.GradientTransformation,
) -> Callable[..., tuple[Any, Any]]:
  """Builds FedAvg the way FedJAX's default engine runs it.

  Per client: a jitted init, one jitted step per local batch (the batch is
  sliced from host numpy arrays, as FedJAX's client datasets are), and a
  jitted final that returns the delta. The batches are those of
  `local_train`, so one round equals the compiled round's.

  Returns:
    `run_round(params, opt_state, train, rng) -> (params, opt_state)`, where
    `train` is the stacked train split with a leading client axis.
  """
  sampler = jax.jit(make_sampler("uniform", num_clients, clients_per_round))
  optimizer = optax.sgd(client.learning_rate)

  @jax.jit
  def client_batches(client_key, num_examples, max_examples_like):
    max_examples = max_examples_like.shape[0]
    slots = min(client.batch_size, max_examples)
    batch_key, _ = jax.random.split(client_key)
    return jax.vmap(
      lambda step: batch_indices(
        batch_key, step, num_examples, max_examples, slots
      )
    )(jnp.arange(client.num_local_steps))

  @jax.jit
  def client_init(params):
    return params, optimizer.init(params)

  @jax.jit
  def client_step(state, x, y, mask):
    params, opt_state = state

    def objective(params):
      logits, _ = model.apply({"params": params}, x, train=True)
      return losses.masked_mean(client.loss_fn(logits, y), mask)

    grads = jax.grad(objective)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  @jax.jit
  def client_final(global_params, state):
    return otu.tree_sub(state[0], global_params)

  def run_round(params, opt_state, train: ClientArrays, rng):
    x_host = np.asarray(train.x)
    y_host = np.asarray(train.y)
    sizes = np.asarray(train.num_examples)
    sample_key, clients_key = jax.random.split(rng)
    client_ids = np.asarray(sampler(sample_key).client_ids)

    deltas, weights = [], []
    for client_id in client_ids:
      client_key = jax.random.fold_in(clients_key, client_id)
      indices, masks = client_batches(
        client_key, sizes[client_id], x_host[client_id, :, 0]
      )
      indices, masks = np.asarray(indices), np.asarray(masks)
      state = client_init(params)
      for step in range(client.num_local_steps):
        rows = indices[step]
        state = client_step(
          state,
          x_host[client_id, rows],
          y_host[client_id, rows],
          masks[step],
        )
      deltas.append(client_final(params, state))
      weights.append(jnp.float32(sizes[client_id]))

    updates, opt_state = server_optimizer.update(
      otu.tree_scale(-1.0, _mean_delta(deltas, weights)), opt_state, params
    )
    return optax.apply_updates(params, updates), opt_state

  return run_round
