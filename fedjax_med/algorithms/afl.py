"""Agnostic federated learning: a minimax over mixtures of the sites.

Reference: M. Mohri, G. Sivek, A. T. Suresh, "Agnostic Federated Learning",
ICML 2019, arXiv:1902.00146.

AFL minimises the loss under the worst mixture of the clients' distributions,

  min_w max_{lambda in simplex} sum_k lambda_k L_k(w),

with stochastic mirror descent on `w` and projected gradient ascent on
`lambda`. Each round here:

  1. every sampled client computes `L_k(w)`, its mean loss at the global
     model `w`, then trains locally from `w` as in FedAvg;
  2. the server averages the deltas with weights `lambda_k` (over the
     cohort's clients with data) and applies the server optimizer;
  3. the server takes an ascent step on the mixture weights,
     `lambda <- Proj_simplex(lambda + lambda_learning_rate * g)`, where `g`
     estimates the loss vector `(L_1(w), ..., L_N(w))`, and stores `lambda`
     in `ServerState.extra["lambda"]`.

With one local SGD step on the full local rows, step 2 is the paper's update
`w <- w - lr * sum_k lambda_k grad L_k(w)` when every client takes part.

Choices this implementation makes:
  * `lambda` ranges over the whole simplex of the population's clients,
    with the sites as the paper's domains, and starts uniform (`1 / N`), as
    in the code released with q-FFL (litian96/fair_flearn, trainers/afl.py).
    The paper also allows a convex subset of the simplex, which is not
    implemented.
  * Partial participation: with full participation `g` is the loss vector.
    With sampled cohorts, unsampled clients contribute 0 and sampled ones
    their loss divided by the inclusion probability
    (`clients_per_round / N` for "uniform" sampling, `poisson_rate` for
    "poisson"), an unbiased estimate of the loss vector.
  * `L_k(w)` is the mean of `client.loss_fn` over all of the client's
    training rows at `w`, in inference mode (the released code uses one
    minibatch), so `g` is exact under full participation.
  * `lambda` replaces `cohort.weighting`: the weight of client k is
    `lambda_k` (0 for a client without rows), for the deltas, the
    normalization statistics and the logged `train_loss`. With
    `lambda_learning_rate = 0`, `lambda` stays uniform and AFL is FedAvg
    with uniform weighting.
  * The last iterate is the global model. The paper's guarantee is for the
    average of the iterates, which the released code reports; it is not
    kept here.
  * Differential privacy and secure aggregation are rejected: the server
    reads each sampled client's loss in the clear to update `lambda`.

Options in `config.algorithm`: `lambda_learning_rate` (default 0.1, not
tuned). The losses are cross-entropies of order 1, so with 0.1 the gap
between two sites' `lambda` changes by about 0.1 times their loss gap per
round.
"""

from __future__ import annotations

import jax
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
from fedjax_med.algorithms.qfedavg import client_loss, reject_privacy
from fedjax_med.core.aggregation import Aggregator
from fedjax_med.core.algorithm import FederatedAlgorithm
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.models.base import Model


def project_to_simplex(v: jax.Array) -> jax.Array:
  """Euclidean projection of a vector onto the probability simplex.

  The sort-based algorithm of Duchi, Shalev-Shwartz, Singer, Chandra,
  "Efficient Projections onto the l1-Ball for Learning in High Dimensions",
  ICML 2008.
  """
  n = v.shape[0]
  u = jnp.sort(v)[::-1]
  excess = jnp.cumsum(u) - 1.0
  rank = jnp.arange(1, n + 1, dtype=v.dtype)
  support = u - excess / rank > 0
  # The support is a prefix of the sorted vector, and its last index sets
  # the threshold.
  last = jnp.max(jnp.where(support, jnp.arange(n), 0))
  threshold = excess[last] / (last + 1).astype(v.dtype)
  return jnp.maximum(v - threshold, 0.0)


def inclusion_probability(cohort: CohortConfig, num_clients: int) -> float:
  """Returns the probability that a given client is in a round's cohort."""
  if cohort.sampling == "poisson":
    if not cohort.poisson_rate:
      raise ValueError(
        "afl with sampling='poisson' needs cohort.poisson_rate > 0; pass "
        "e.g. --config.cohort.poisson_rate=0.5."
      )
    return float(cohort.poisson_rate)
  return min(cohort.clients_per_round, num_clients) / num_clients


def afl(
  model: Model,
  num_clients: int,
  *,
  lambda_learning_rate: float,
  client: ClientConfig,
  cohort: CohortConfig,
  server_learning_rate: float | Schedule = 1.0,
  aggregator: Aggregator | None = None,
  dataset_name: str = "the dataset",
) -> FederatedAlgorithm:
  """AFL with projected gradient ascent on the mixture weights.

  Raises:
    ValueError: If `lambda_learning_rate` is negative.
  """
  if not lambda_learning_rate >= 0:
    raise ValueError(
      f"afl lambda_learning_rate={lambda_learning_rate} must be "
      "non-negative; pass e.g. --config.algorithm.lambda_learning_rate=0.1."
    )
  schedule = as_schedule(server_learning_rate, "server learning_rate")
  # Scales the sampled clients' losses into an unbiased loss vector.
  loss_scale = 1.0 / inclusion_probability(cohort, num_clients)

  def init_extra(params):
    del params
    # float32, not weakly typed, so the round's output state keeps the
    # input's type and the round does not retrace.
    uniform = jnp.full((num_clients,), 1.0 / num_clients, jnp.float32)
    return {"lambda": uniform}

  def finish(context: ClientContext, result, update: ClientUpdate):
    del result
    loss = client_loss(
      model, client.loss_fn, context.params, context.model_state, context.batch
    )
    has_data = (context.batch.num_examples > 0).astype(jnp.float32)
    weight = context.extra["lambda"][context.client_id] * has_data
    losses = jax.nn.one_hot(context.client_id, num_clients) * loss
    return update._replace(weight=weight, contribution={"loss": losses})

  def update_extra(extra, summed, num_clients):
    del num_clients
    ascent = lambda_learning_rate * loss_scale * summed["loss"]
    return {"lambda": project_to_simplex(extra["lambda"] + ascent)}

  algorithm = build_fedavg_family(
    model,
    num_clients,
    client=client,
    cohort=cohort,
    server_optimizer=optax.sgd(schedule),
    hooks=ClientHooks(
      init_extra=init_extra, finish=finish, update_extra=update_extra
    ),
    aggregator=aggregator,
    dataset_name=dataset_name,
  )

  def run_round(state, data, rng):
    state, metrics = algorithm.run_round(state, data, rng)
    mixture = state.extra["lambda"]
    metrics = {
      **metrics,
      "lambda_max": jnp.max(mixture),
      "lambda_min": jnp.min(mixture),
    }
    return state, metrics

  return algorithm._replace(run_round=run_round, pieces=None)


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
  """Builds AFL from `config.algorithm.lambda_learning_rate` (default 0.1)."""
  reject_privacy(config, "afl")
  return afl(
    model,
    data.num_clients,
    lambda_learning_rate=float(
      config.algorithm.get("lambda_learning_rate", 0.1)
    ),
    client=client,
    cohort=cohort,
    server_learning_rate=server_learning_rate,
    aggregator=aggregator,
    dataset_name=dataset_name,
  )


def mixture_weights(state) -> jax.Array:
  """Returns AFL's mixture weights `lambda`, shape `[num_clients]`."""
  return state.extra["lambda"]
