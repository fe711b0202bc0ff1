"""Ditto: personal models regularized toward the global model.

Reference: T. Li, S. Hu, A. Beirami, V. Smith, "Ditto: Fair and Robust
Federated Learning Through Personalization", ICML 2021, arXiv:2012.04221.

The global model `w` is trained by FedAvg. Every client also keeps a personal
model `v_k`, which never leaves the client, trained on

  F_k(v) + (ditto_lambda / 2) * ||v - w^t||^2,

where `w^t` is the global model broadcast at the start of round t. In each
round a sampled client takes `personal_steps` local steps on this objective,

  v_k <- v_k - lr_p * (grad F_k(v_k) + ditto_lambda * (v_k - w^t)),

in addition to its usual local training of `w` (the two start from different
points and do not interact within a round). Evaluation on a client's own data
uses `v_k`, returned by `client_variables`. `ditto_lambda = 0` trains purely
local models; a large `ditto_lambda` pins `v_k` to `w^t`.

Choices this implementation makes:
  * `v_k` starts at the initial global model, and only sampled clients
    update it.
  * The personal steps draw minibatches of `client.batch_size` rows from
    the client's training rows, with a key independent of the global
    model's local training. They use the configured client optimizer
    (plain SGD in the paper) with learning rate `personal_learning_rate`,
    where 0 (the default) reuses the round's client learning rate.
  * The proximal term covers "params" only. A model with non-trainable
    state (batch normalization) keeps per-client statistics for `v_k`,
    updated by the personal steps, so the personal model is the full set
    of variables.
  * The global model's training and aggregation are FedAvg's, unchanged,
    so Ditto's global model is bit-identical to FedAvg's with the same seed.
  * Privacy: the global path runs under DP-FedAvg, DP-SGD or secure
    aggregation as FedAvg does, and the personal models never reach the
    server. Personal steps do not use DP-SGD, because their result is never
    released; note that evaluating `v_k` on shared test data is outside that
    guarantee.

Options in `config.algorithm`: `ditto_lambda` (default 0.1, from the grid
{0.01, 0.1, 1, 2} the paper tunes over), `personal_steps` (default 0, which
means `client.num_local_steps`, as the paper runs the same number of local
epochs for both models) and `personal_learning_rate` (default 0, see above).
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import optax

from fedjax_med.algorithms.fedavg import (
  ClientConfig,
  ClientContext,
  ClientHooks,
  ClientUpdate,
  CohortConfig,
  Schedule,
  as_schedule,
  build_fedavg_family,
)
from fedjax_med.algorithms.fedprox import proximal_regularizer
from fedjax_med.algorithms.settings import make_client_optimizer
from fedjax_med.core import tree as tree_lib
from fedjax_med.core.aggregation import Aggregator
from fedjax_med.core.algorithm import FederatedAlgorithm
from fedjax_med.core.client import local_train
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.models.base import Model


def ditto(
  model: Model,
  num_clients: int,
  *,
  ditto_lambda: float,
  personal_steps: int,
  client: ClientConfig,
  cohort: CohortConfig,
  personal_learning_rate: float | None = None,
  server_learning_rate: float | Schedule = 1.0,
  aggregator: Aggregator | None = None,
  dataset_name: str = "the dataset",
) -> FederatedAlgorithm:
  """Ditto on the FedAvg round.

  Args:
    model: The network.
    num_clients: Clients in the population.
    ditto_lambda: Weight of the proximal term toward the global model.
    personal_steps: Local steps on the personal model per round.
    client: Local training settings of the global model; the personal
      steps use its optimizer, batch size and loss.
    cohort: Cohort sampling and weighting.
    personal_learning_rate: Step size of the personal steps; None uses the
      round's client learning rate.
    server_learning_rate: FedAvg's server step size.
    aggregator: Replaces the weighted mean of the global deltas.
    dataset_name: Used in error messages.

  Returns:
    The algorithm, whose `client_variables` are the personal models
    stacked over a leading `num_clients` axis.

  Raises:
    ValueError: For a negative `ditto_lambda`, `personal_steps < 1` or a
      non-positive `personal_learning_rate`.
  """
  if not ditto_lambda >= 0:
    raise ValueError(
      f"ditto_lambda={ditto_lambda} must be non-negative; pass e.g. "
      "--config.algorithm.ditto_lambda=0.1."
    )
  if personal_steps < 1:
    raise ValueError(
      f"personal_steps={personal_steps} must be at least 1; pass e.g. "
      "--config.algorithm.personal_steps=10."
    )
  if personal_learning_rate is not None and not personal_learning_rate > 0:
    raise ValueError(
      f"personal_learning_rate={personal_learning_rate} must be positive, "
      "or None to use the client learning rate."
    )
  schedule = as_schedule(server_learning_rate, "server learning_rate")
  regularizer = proximal_regularizer(ditto_lambda)

  def finish(context: ClientContext, result, update: ClientUpdate):
    del result
    personal = context.client_state
    learning_rate = context.learning_rate
    if personal_learning_rate is not None:
      learning_rate = jnp.asarray(personal_learning_rate, jnp.float32)
    trained = local_train(
      model,
      personal,
      context.batch,
      context.key,
      optimizer=make_client_optimizer(client, learning_rate),
      num_steps=personal_steps,
      batch_size=client.batch_size,
      regularizer=regularizer(context.params, None, None),
      loss_fn=client.loss_fn,
    )
    new_personal = {"params": trained.params, **trained.model_state}
    return update._replace(client_state=new_personal)

  algorithm = build_fedavg_family(
    model,
    num_clients,
    client=client,
    cohort=cohort,
    server_optimizer=optax.sgd(schedule),
    hooks=ClientHooks(finish=finish),
    aggregator=aggregator,
    dataset_name=dataset_name,
  )

  def init(rng, variables):
    # The personal models are full variables (with any normalization
    # statistics), which the family's `init_client_states` hook cannot see.
    state = algorithm.init(rng, variables)
    personal = tree_lib.stack_trees(variables, num_clients)
    return state._replace(client_states=personal)

  def client_variables(state):
    return state.client_states

  return algorithm._replace(init=init, client_variables=client_variables)


def from_config(
  config: ml_collections.ConfigDict,
  model: Model,
  data: FederatedData,
  *,
  client: ClientConfig,
  cohort: CohortConfig,
  server_learning_rate: float | Schedule,
  aggregator: Aggregator | None,
  dataset_name: str,
) -> FederatedAlgorithm:
  """Builds Ditto from `config.algorithm` (`ditto_lambda`, default 0.1;
  `personal_steps`, default 0 meaning `client.num_local_steps`;
  `personal_learning_rate`, default 0 meaning the client learning rate).
  """
  section = config.algorithm
  personal_steps = int(section.get("personal_steps", 0))
  if personal_steps == 0:
    personal_steps = client.num_local_steps
  personal_learning_rate = float(section.get("personal_learning_rate", 0.0))
  if personal_learning_rate == 0:
    personal_learning_rate = None
  return ditto(
    model,
    data.num_clients,
    ditto_lambda=float(section.get("ditto_lambda", 0.1)),
    personal_steps=personal_steps,
    personal_learning_rate=personal_learning_rate,
    client=client,
    cohort=cohort,
    server_learning_rate=server_learning_rate,
    aggregator=aggregator,
    dataset_name=dataset_name,
  )


def personal_models(state):
  """Returns Ditto's personal variables, stacked over clients."""
  return state.client_states
