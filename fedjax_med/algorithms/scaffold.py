"""SCAFFOLD: control variates that correct client drift.

Reference: S. P. Karimireddy, S. Kale, M. Mohri, S. J. Reddi, S. U. Stich,
A. T. Suresh, "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020, arXiv:1910.06378.

State: a server control variate `c` and one `c_k` per client (both zero at
the start, shaped like "params"). Each local step uses the corrected
gradient `g_k(y) - c_k + c`, written here as the linear term
`<c - c_k, y>` added to the local loss. After `K` local steps with learning
rate `lr`, the client sets (option II of the paper)

  c_k+ = c_k - c + (w - y) / (K * lr),

and the server updates `c <- c + (1 / N) * sum_k (c_k+ - c_k)` over the
cohort, with `N` the number of clients in the population, and the global
model with the server optimizer on the average delta (`sgd(1.0)` by default,
the paper's global step size 1).

Choices: option II is used because option I needs an extra pass over the
client's data. With a local optimizer other than plain SGD (momentum, Adam)
option II is only an approximation of the average local gradient. The model
delta is averaged with the configured weighting (the paper uses a uniform
mean; set weighting="uniform" to match it).
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
from fedjax_med.core import tree as tree_lib
from fedjax_med.core.algorithm import FederatedAlgorithm
from fedjax_med.models.base import Model


def _init_client_states(params, num_clients):
  return tree_lib.stack_trees(otu.tree_zeros_like(params), num_clients)


def _regularizer(global_params, client_control, server_control):
  del global_params
  correction = jax.lax.stop_gradient(
    otu.tree_sub(server_control, client_control)
  )
  return lambda params: otu.tree_vdot(correction, params)


def _update_client_state(
  client_control, global_params, local_params, server_control, num_steps, lr
):
  drift = otu.tree_sub(global_params, local_params)
  new_control = otu.tree_add(
    otu.tree_sub(client_control, server_control),
    otu.tree_scale(1.0 / (num_steps * lr), drift),
  )
  return new_control, otu.tree_sub(new_control, client_control)


def _update_extra(server_control, summed_control_delta, num_clients):
  return otu.tree_add(
    server_control, otu.tree_scale(1.0 / num_clients, summed_control_delta)
  )


def scaffold(
  model: Model,
  num_clients: int,
  *,
  client: ClientConfig,
  cohort: CohortConfig,
  server_learning_rate: float | Schedule = 1.0,
  dataset_name: str = "the dataset",
) -> FederatedAlgorithm:
  """SCAFFOLD (option II control variates) on the FedAvg round."""
  schedule = as_schedule(server_learning_rate, "server learning_rate")
  hooks = ClientHooks(
    init_client_states=_init_client_states,
    init_extra=otu.tree_zeros_like,
    regularizer=_regularizer,
    update_client_state=_update_client_state,
    update_extra=_update_extra,
  )
  return build_fedavg_family(
    model,
    num_clients,
    client=client,
    cohort=cohort,
    server_optimizer=optax.sgd(schedule),
    hooks=hooks,
    dataset_name=dataset_name,
  )


def control_variates(state) -> tuple[jax.Array, jax.Array]:
  """Returns `(server_control, client_controls)` of a SCAFFOLD state."""
  return state.extra, state.client_states
