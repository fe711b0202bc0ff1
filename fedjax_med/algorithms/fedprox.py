"""FedProx: local training with a proximal term toward the global model.

Reference: T. Li, A. K. Sahu, M. Zaheer, M. Sanjabi, A. Talwalkar, V. Smith,
"Federated Optimization in Heterogeneous Networks", MLSys 2020,
arXiv:1812.06127.

Each client minimises `F_k(w) + (mu / 2) * ||w - w_global||^2`, where
`w_global` is the model broadcast at the start of the round and stays fixed
for the whole round (it is a constant of the traced round, never the moving
local weights). The term covers "params" only, not normalization
statistics. The server step is FedAvg's. The paper's tolerance for variable
local work (inexact solutions) is not modelled: every client runs the same
number of local steps, which keeps the round's shapes fixed.
"""

from __future__ import annotations

import jax
import optax
from optax import tree_utils as otu

from fedjax_med.algorithms.fedavg import (
  ClientConfig,
  ClientHooks,
  CohortConfig,
  Schedule,
  as_schedule,
  build_fedavg_family,
)
from fedjax_med.core.aggregation import Aggregator
from fedjax_med.core.algorithm import FederatedAlgorithm
from fedjax_med.models.base import Model


def proximal_regularizer(mu: float):
  """Returns the hook that adds `(mu / 2) * ||w - w_global||^2`."""

  def regularizer(global_params, client_state, extra):
    del client_state, extra
    anchor = jax.lax.stop_gradient(global_params)

    def term(params):
      return (
        0.5 * mu * otu.tree_norm(otu.tree_sub(params, anchor), squared=True)
      )

    return term

  return regularizer


def fedprox(
  model: Model,
  num_clients: int,
  *,
  mu: float,
  client: ClientConfig,
  cohort: CohortConfig,
  server_learning_rate: float | Schedule = 1.0,
  aggregator: Aggregator | None = None,
  dataset_name: str = "the dataset",
) -> FederatedAlgorithm:
  """FedProx with proximal weight `mu` (mu = 0 is FedAvg).

  `aggregator` replaces the weighted mean of the deltas.
  """
  if mu < 0:
    raise ValueError(f"fedprox mu={mu} must be non-negative.")
  schedule = as_schedule(server_learning_rate, "server learning_rate")
  return build_fedavg_family(
    model,
    num_clients,
    client=client,
    cohort=cohort,
    server_optimizer=optax.sgd(schedule),
    hooks=ClientHooks(regularizer=proximal_regularizer(mu)),
    aggregator=aggregator,
    dataset_name=dataset_name,
  )
