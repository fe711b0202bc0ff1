"""MOON: model-contrastive local training on the FedAvg round.

Reference: Q. Li, B. He, D. Song, "Model-Contrastive Federated Learning",
CVPR 2021, arXiv:2103.16257.

Each local step minimizes, on a batch,

  L = L_data + mu * l_con,
  l_con = -log(exp(cos(z, z_g) / t) / (exp(cos(z, z_g) / t) +
                                       exp(cos(z, z_p) / t))),

where `z`, `z_g` and `z_p` are the representations of the batch under the
model being trained, the round's global model and the client's local model
from its previous round (`fedjax_med.losses.representation.
model_contrastive`). The global and previous models are frozen. The server
is FedAvg's.

Every client's previous local parameters live in the stacked client states
(one copy of "params" per client). The `finish` hook stores the local
parameters a sampled client ends its round with, and clients outside the
cohort keep theirs.

Choices:
  * The previous models start as the initial global parameters. In round 1
    the negative therefore equals the positive, and `l_con = log 2` has zero
    gradient, so the round is FedAvg's. FedUV's reference code
    (github.com/sonhamin/FedUV, `train_fl.py`) also trains round 1 without
    a negative. A client first sampled in a later round contrasts against
    the initial model, because it has no local model of its own yet.
  * `mu = 1` and `temperature = 0.5` by default, the argument defaults of
    MOON's code (github.com/QinbinLi/MOON, `main.py`) and of FedUV's. MOON's
    README runs CIFAR-10 with `mu = 5`. The smaller weight keeps the
    contrastive term from dominating the data loss of the small tabular
    models this library trains. One previous model is kept, the default
    `model_buffer_size = 1` of MOON's code.
  * `z` is the input of the model's last dense layer
    (`Model.apply_features`). MOON adds a two-layer projection head (out
    256), and the zoo models have none. A model without a hidden layer
    (logistic regression) has the input as its features, so `l_con` does
    not depend on the parameters and MOON reduces to FedAvg.
  * The frozen models run with `train=False`, so without dropout. Both use
    the round's global non-trainable state (batch-norm statistics), because
    only the previous "params" are stored per client.
  * `mu = 0` skips the term and gives FedAvg bit for bit.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import ml_collections
import optax

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
from fedjax_med.core import tree as tree_lib
from fedjax_med.core.aggregation import Aggregator
from fedjax_med.core.algorithm import FederatedAlgorithm
from fedjax_med.core.client import LocalResult, Objective
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.losses import representation
from fedjax_med.models.base import Model


class MoonConfig(NamedTuple):
  """MOON's settings.

  Attributes:
    mu: Weight of the model-contrastive loss; 0 gives FedAvg.
    temperature: Temperature of the contrastive softmax, > 0.
  """

  mu: float = 1.0
  temperature: float = 0.5


def validate_config(config: MoonConfig) -> None:
  """Raises ValueError for settings MOON cannot use."""
  if not config.mu >= 0:
    raise ValueError(
      f"moon mu={config.mu} must be >= 0; set "
      "--config.algorithm.contrastive_weight to 1 or 5 as the paper does, or "
      "0 for FedAvg."
    )
  if not config.temperature > 0:
    raise ValueError(
      f"moon temperature={config.temperature} must be positive; the paper "
      "uses 0.5."
    )


def make_objective_hook(model: Model, config: MoonConfig, loss_fn):
  """Builds the `objective` hook: a client's step objective for its round.

  The objective's data loss excludes the contrastive term.
  """

  def objective_hook(context: ClientContext) -> Objective:
    global_variables = {"params": context.params, **context.model_state}
    previous_variables = {
      "params": context.client_state,
      **context.model_state,
    }

    def objective(params, model_state, x, y, mask, rng):
      logits, z, new_state = model.apply_features(
        {"params": params, **model_state}, x, train=True, rng=rng
      )
      data_loss = losses.masked_mean(loss_fn(logits, y), mask)
      if config.mu == 0:
        return data_loss, (data_loss, new_state)
      _, z_global, _ = model.apply_features(global_variables, x)
      _, z_previous, _ = model.apply_features(previous_variables, x)
      contrastive = representation.model_contrastive(
        z,
        jax.lax.stop_gradient(z_global),
        jax.lax.stop_gradient(z_previous),
        config.temperature,
        mask,
      )
      return data_loss + config.mu * contrastive, (data_loss, new_state)

    return objective

  return objective_hook


def _init_client_states(params, num_clients):
  return tree_lib.stack_trees(params, num_clients)


def _finish(
  context: ClientContext, result: LocalResult, update: ClientUpdate
) -> ClientUpdate:
  del context
  return update._replace(client_state=result.params)


def moon(
  model: Model,
  num_clients: int,
  *,
  client: ClientConfig,
  cohort: CohortConfig,
  config: MoonConfig | None = None,
  server_learning_rate: float | Schedule = 1.0,
  aggregator: Aggregator | None = None,
  dataset_name: str = "the dataset",
) -> FederatedAlgorithm:
  """MOON on the FedAvg round.

  Args:
    model: The network; it must provide `apply_features`.
    num_clients: Clients in the population.
    client: Local training settings; `client.loss_fn` is the data loss.
    cohort: Cohort sampling, chunking and weighting.
    config: MOON's settings; None takes the defaults.
    server_learning_rate: FedAvg's server step size.
    aggregator: Replaces the weighted mean of the deltas.
    dataset_name: Used in error messages.

  Raises:
    ValueError: For invalid settings or a model without features.
  """
  config = config or MoonConfig()
  validate_config(config)
  if model.apply_features is None:
    raise ValueError(
      "moon needs a model that returns the features its head reads "
      "(Model.apply_features), and this model has none; use a flax zoo "
      "model (--config.model.library=flax, e.g. --config.model.name=mlp)."
    )
  hooks = ClientHooks(
    init_client_states=_init_client_states,
    objective=make_objective_hook(model, config, client.loss_fn),
    finish=_finish,
  )
  schedule = as_schedule(server_learning_rate, "server learning_rate")
  return build_fedavg_family(
    model,
    num_clients,
    client=client,
    cohort=cohort,
    server_optimizer=optax.sgd(schedule),
    hooks=hooks,
    aggregator=aggregator,
    dataset_name=dataset_name,
  )


def previous_local_params(state):
  """Returns the stacked previous local "params", `[num_clients, ...]`."""
  return state.client_states


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
  """Builds MOON from `config.algorithm.contrastive_weight` and `.temperature`.

  The paper's `mu` is read from `contrastive_weight`, because the base
  config's `algorithm.mu` is FedProx's proximal weight.
  """
  defaults = MoonConfig()
  section = config.algorithm
  settings = MoonConfig(
    mu=float(section.get("contrastive_weight", defaults.mu)),
    temperature=float(section.get("temperature", defaults.temperature)),
  )
  return moon(
    model,
    data.num_clients,
    client=client,
    cohort=cohort,
    config=settings,
    server_learning_rate=server_learning_rate,
    aggregator=aggregator,
    dataset_name=dataset_name,
  )
