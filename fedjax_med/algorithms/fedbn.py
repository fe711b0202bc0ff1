"""FedBN: federated averaging with local batch normalization.

Reference: X. Li, M. Jiang, X. Zhang, M. Kamp, Q. Dou, "FedBN: Federated
Learning on Non-IID Features via Local Batch Normalization", ICLR 2021,
arXiv:2102.07623.

Every client keeps its own batch normalization (BN) layers: the affine
`scale` and `bias` and the running `mean` and `var` (see
`normalization` for which leaves count as BN). All other parameters follow
the FedAvg round. In each round a sampled client:

  1. starts local training from the global shared parameters and its own
     BN parameters and statistics (`start_variables`);
  2. trains as under FedAvg;
  3. sends its delta with the BN leaves set to zero, so they never enter
     the aggregate or the server optimizer, and stores its trained BN
     parameters and statistics in its row of `client_states` (`finish`).

The server keeps the initial BN leaves in `params` and `model_state` and
never updates them: the global "batch_stats" stay at their initial values,
and no client's statistics reach the server.

Evaluation:
  * `client_variables(state)` stacks, for each client, the global shared
    parameters with that client's own BN parameters and statistics: the
    model a site deploys, used for personalized evaluation.
  * `global_variables(state)` is the model for sites outside the
    federation. The paper leaves it open; here the BN parameters and
    statistics are the uniform mean over all clients' stored rows. A
    client that has never been sampled still contains the initial values
    and counts in that mean.

Choices:
  * The shared layers are averaged with `cohort.weighting`. The FedBN
    authors' code weights clients uniformly; the Fed-Heart-Disease config
    keeps the base experiment's example weighting so that FedBN differs
    from FedAvg only in the BN layers.
  * Client states start from the initial model's BN leaves, stacked over
    clients.
"""

from __future__ import annotations

import ml_collections
import optax

from fedjax_med.algorithms import normalization
from fedjax_med.algorithms.fedavg import (
  ClientConfig,
  ClientContext,
  ClientHooks,
  ClientUpdate,
  CohortConfig,
  Schedule,
  ServerState,
  as_schedule,
  build_fedavg_family,
)
from fedjax_med.core import tree as tree_lib
from fedjax_med.core.aggregation import Aggregator
from fedjax_med.core.algorithm import FederatedAlgorithm
from fedjax_med.core.client import LocalResult
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.models.base import Model


def _start_variables(context: ClientContext):
  variables = {"params": context.params, **context.model_state}
  return normalization.merge_variables(variables, context.client_state)


def _finish(
  context: ClientContext, result: LocalResult, update: ClientUpdate
) -> ClientUpdate:
  del context
  trained = {"params": result.params, **result.model_state}
  return update._replace(
    delta=normalization.zero_normalization(update.delta),
    client_state=normalization.local_variables(trained),
  )


def _keep_model_state(mean_model_state, state: ServerState):
  del mean_model_state  # The clients' statistics stay with the clients.
  return state.model_state


def fedbn(
  model: Model,
  num_clients: int,
  *,
  client: ClientConfig,
  cohort: CohortConfig,
  server_learning_rate: float | Schedule = 1.0,
  aggregator: Aggregator | None = None,
  dataset_name: str = "the dataset",
) -> FederatedAlgorithm:
  """FedBN on the FedAvg round, with personalized `client_variables`.

  `init` raises ValueError for a model without batch normalization.
  """
  schedule = as_schedule(server_learning_rate, "server learning_rate")
  hooks = ClientHooks(
    start_variables=_start_variables,
    finish=_finish,
    aggregate_model_state=_keep_model_state,
  )
  base = build_fedavg_family(
    model,
    num_clients,
    client=client,
    cohort=cohort,
    server_optimizer=optax.sgd(schedule),
    hooks=hooks,
    aggregator=aggregator,
    dataset_name=dataset_name,
  )

  def init(rng, variables):
    normalization.check_has_normalization(variables, "FedBN")
    state = base.init(rng, variables)
    local = normalization.local_variables(variables)
    return state._replace(
      client_states=tree_lib.stack_trees(local, num_clients)
    )

  def global_variables(state: ServerState):
    variables = {"params": state.params, **state.model_state}
    local = normalization.mean_over_clients(state.client_states)
    return normalization.merge_variables(variables, local)

  def client_variables(state: ServerState):
    variables = {"params": state.params, **state.model_state}
    stacked = tree_lib.stack_trees(variables, num_clients)
    return normalization.merge_variables(stacked, state.client_states)

  return base._replace(
    init=init,
    global_variables=global_variables,
    client_variables=client_variables,
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
  """Builds FedBN for `data`'s clients; FedBN reads no `algorithm` options."""
  del config
  return fedbn(
    model,
    data.num_clients,
    client=client,
    cohort=cohort,
    server_learning_rate=server_learning_rate,
    aggregator=aggregator,
    dataset_name=dataset_name,
  )
