"""q-FedAvg: fair resource allocation through the q-FFL objective.

Reference: T. Li, M. Sanjabi, A. Beirami, V. Smith, "Fair Resource Allocation
in Federated Learning", ICLR 2020, arXiv:1905.10497.

q-FFL minimises `sum_k p_k F_k(w)^(q + 1) / (q + 1)`, which gives clients with
a high loss more weight as `q` grows (`q = 0` is the usual weighted mean of
the losses). q-FedAvg, the paper's Algorithm 3, runs FedAvg's local training
and replaces the server step. With `w` the round's global parameters, `w_k`
client k's parameters after local training, `L = 1 / lr` the inverse client
learning rate and `F_k = F_k(w)` the client's loss at `w`:

  dw_k    = L * (w - w_k)
  Delta_k = F_k^q * dw_k
  h_k     = q * F_k^(q - 1) * ||dw_k||^2 + L * F_k^q
  w      <- w - sum_k Delta_k / sum_k h_k.

The round sends `-Delta_k / h_k` as client k's delta with aggregation weight
`h_k`, so the weighted mean computes exactly `-sum_k Delta_k / sum_k h_k`,
and the server optimizer `sgd(server_learning_rate)` applies it. With the
default server learning rate 1 this is the paper's step.

Choices this implementation makes:
  * `F_k` is the mean loss (`client.loss_fn`, the local training loss) over
    all of the client's training rows at the global model, in inference
    mode, computed before local training, as in the authors' code.
  * As in the authors' code, `1e-10` is added to `F_k` before taking powers,
    so `F_k^(q - 1)` stays finite when a client fits its data exactly.
  * The sampling weight `p_k`: the paper samples clients with probability
    `p_k = n_k / n` and then sums uniformly. The cohorts here are drawn
    uniformly, so `cohort.weighting="example"` multiplies both `Delta_k` and
    `h_k` by `n_k`, and "uniform" by 1 for every client with data. Then
    `q = 0` gives `w <- w + sum_k p_k (w_k - w) / sum_k p_k`, which is FedAvg
    with the same weighting (equal up to floating-point rounding).
  * `L = 1 / lr` assumes plain local SGD, as the paper does. With momentum
    or Adam `dw_k` is only an estimate of the gradient.
  * The round's aggregation weight is `p_k h_k`, so normalization
    statistics (flax "batch_stats") are averaged with it too, and the
    logged `train_loss` is the `p_k h_k`-weighted mean of the local losses.
  * Under differential privacy or secure aggregation the method is
    rejected, because its weights `h_k` depend on each client's loss and
    update norm. Their sum is the step's denominator, a data-dependent
    value that neither DP-FedAvg (one clipped delta per client over a
    public denominator) nor the secure sum (weight 1 per client) can carry.

Options in `config.algorithm`: `q` (default 1.0; the paper tunes q over
{0.001, 0.01, 0.1, 1, 2, 5, 10, 15} per dataset).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from optax import tree_utils as otu

from fedjax_med import losses
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
from fedjax_med.core.aggregation import Aggregator
from fedjax_med.core.algorithm import FederatedAlgorithm
from fedjax_med.core.client import ClientBatch
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.models.base import Model

PyTree = Any

# Added to the loss before taking powers, as in the authors' code.
LOSS_EPSILON = 1e-10


def client_loss(
  model: Model,
  loss_fn: Callable[[jax.Array, jax.Array], jax.Array],
  params: PyTree,
  model_state: PyTree,
  batch: ClientBatch,
) -> jax.Array:
  """Returns the mean loss over all of a client's real training rows.

  The model runs in inference mode. A client without rows has loss 0.
  """
  logits, _ = model.apply({"params": params, **model_state}, batch.x)
  mask = jnp.arange(batch.y.shape[0]) < batch.num_examples
  return losses.masked_mean(loss_fn(logits, batch.y), mask)


def reject_privacy(config: ml_collections.ConfigDict, method: str) -> None:
  """Raises ValueError when `config` turns on DP or secure aggregation."""
  privacy = config.get("privacy", None)
  if privacy is None:
    return
  mode = privacy.get("mode", "none")
  if mode != "none":
    raise ValueError(
      f"algorithm.name={method!r} does not support privacy.mode={mode!r}: "
      "its per-client losses reach the server without clipping or noise. "
      "Set privacy.mode='none', or use fedavg, fedprox or ditto with DP."
    )
  if privacy.get("secure_aggregation", False):
    raise ValueError(
      f"algorithm.name={method!r} does not support "
      "privacy.secure_aggregation=True: its loss-dependent weights and "
      "per-client losses cannot pass through the secure sum, which gives "
      "every client weight 1. Set it to False for this method."
    )


def qfedavg(
  model: Model,
  num_clients: int,
  *,
  q: float,
  client: ClientConfig,
  cohort: CohortConfig,
  server_learning_rate: float | Schedule = 1.0,
  aggregator: Aggregator | None = None,
  dataset_name: str = "the dataset",
) -> FederatedAlgorithm:
  """q-FedAvg with fairness parameter `q` (q = 0 is FedAvg).

  Raises:
    ValueError: If `q` is negative.
  """
  if not q >= 0:
    raise ValueError(
      f"qfedavg q={q} must be non-negative; pass e.g. "
      "--config.algorithm.q=1.0 (q=0 is FedAvg)."
    )
  q = float(q)
  schedule = as_schedule(server_learning_rate, "server learning_rate")

  def finish(context: ClientContext, result, update: ClientUpdate):
    del result
    loss = client_loss(
      model, client.loss_fn, context.params, context.model_state, context.batch
    )
    loss = loss + LOSS_EPSILON
    lipschitz = 1.0 / context.learning_rate
    # update.delta is w_k - w, so dw_k = -L * delta.
    gradient_norm_sq = lipschitz**2 * otu.tree_norm(update.delta, squared=True)
    h = lipschitz * loss**q
    if q > 0:
      h = h + q * loss ** (q - 1.0) * gradient_norm_sq
    # -Delta_k / h_k = F^q * L * (w_k - w) / h_k. F^q can underflow to 0
    # for a large q; such a client then gets weight 0.
    positive = h > 0
    scale = jnp.where(
      positive, lipschitz * loss**q / jnp.where(positive, h, 1.0), 0.0
    )
    delta = otu.tree_scale(scale, update.delta)
    return update._replace(delta=delta, weight=update.weight * h)

  return build_fedavg_family(
    model,
    num_clients,
    client=client,
    cohort=cohort,
    server_optimizer=optax.sgd(schedule),
    hooks=ClientHooks(finish=finish),
    aggregator=aggregator,
    dataset_name=dataset_name,
  )


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
  """Builds q-FedAvg from `config.algorithm.q` (default 1.0)."""
  reject_privacy(config, "qfedavg")
  return qfedavg(
    model,
    data.num_clients,
    q=float(config.algorithm.get("q", 1.0)),
    client=client,
    cohort=cohort,
    server_learning_rate=server_learning_rate,
    aggregator=aggregator,
    dataset_name=dataset_name,
  )
