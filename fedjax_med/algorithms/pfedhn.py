"""pFedHN: personalized federated learning with a server-side hypernetwork.

Reference: A. Shamsian, A. Navon, E. Fetaya, G. Chechik, "Personalized
Federated Learning using Hypernetworks", ICML 2021, arXiv:2103.04628 (code:
github.com/AvivSham/pFedHN).

A hypernetwork `H_phi` (`fedjax_med.models.hypernetwork`) maps client k's
learned embedding `v_k` to the weights of its model, `theta_k = H_phi(v_k)`.
One round, for every sampled client k:

  1. Generate `theta_k = H_phi(v_k)` and run local training from it.
  2. Turn the local change `theta~_k - theta_k` into updates of the
     hypernetwork and the embedding with one vector-Jacobian product:
       delta_phi = (d theta_k / d phi)^T (theta~_k - theta_k),
       v_k <- v_k + embedding_learning_rate *
                    (d theta_k / d v_k)^T (theta~_k - theta_k).
     With plain SGD this is the paper's update: `theta_k - theta~_k` is the
     paper's uplink, so `-delta_phi` is its hypernetwork gradient.
  3. The aggregator averages `delta_phi` over the cohort (and clips, noises
     or securely sums it under `privacy`), and the server optimizer applies
     it to `phi`.

Each client's personal model is `H_phi(v_k)` (`client_variables`). The
global model, evaluated on every site and used for sites outside the
federation, is `H_phi(mean_k v_k)` (`global_variables`); the paper does not
define one.

Where the embeddings live: the paper keeps every `v_k` at the server, which
receives `theta~_k - theta_k` and computes the vector-Jacobian product. The
simulation stores the embeddings stacked in `ServerState.client_states` and
computes the product inside each client's update, which gives the same
numbers. Under client-level DP or secure aggregation a deployment must keep
`v_k` at client k, which then computes the product itself, so that only
`delta_phi` reaches the aggregator. `theta~_k - theta_k`, and the embedding
update computed from it, never leave the client. The mean embedding behind
`global_variables` is an evaluation quantity of the simulation and is
outside any privacy guarantee.

Choices this implementation makes:
  * A cohort of clients trains each round and the server averages their
    `delta_phi` (weighted by `cohort.weighting`), where the paper's
    code samples one client per server step.
  * The embeddings take a plain gradient step with their own learning rate
    (`embedding_learning_rate`, default 0.01, the paper's code's
    hypernetwork learning rate); the paper's code also gives them momentum
    and weight decay.
  * `algorithm.server_optimizer` is "sgd" by default ("momentum" and
    "adam" use `config.server`'s momentum, b1 and b2). With the hidden
    features' squared norm near 50 at init, a server learning rate near
    1/50 keeps the kernel step comparable to the bias step.
  * Embedding size `1 + num_clients // 4` and three hidden layers of 100
    units, the defaults of the authors' code. The embeddings start from
    N(0, 1) as in that code, and the hypernetwork from the target model's
    initialization (see `fedjax_med.models.hypernetwork`).
  * Non-trainable target state (batch normalization statistics) is shared
    and averaged as in FedAvg.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
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
from fedjax_med.core.aggregation import Aggregator
from fedjax_med.core.algorithm import FederatedAlgorithm
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.models.base import Model
from fedjax_med.models.hypernetwork import Hypernetwork, hypernetwork

PyTree = Any

SERVER_OPTIMIZERS = ("sgd", "momentum", "adam")


class PFedHNConfig(NamedTuple):
  """pFedHN's choices.

  Attributes:
    embedding_dim: Length of each client embedding; 0 picks
      `1 + num_clients // 4`.
    hidden_sizes: Hidden widths of the hypernetwork MLP.
    output_scale: Standard deviation of the hypernetwork's output kernel at
      init.
    embedding_learning_rate: Step size of the embeddings' update.
  """

  embedding_dim: int = 0
  hidden_sizes: Sequence[int] = (100, 100, 100)
  output_scale: float = 0.01
  embedding_learning_rate: float = 0.01


def default_embedding_dim(num_clients: int) -> int:
  """Returns the authors' code's embedding size, `1 + num_clients // 4`."""
  return 1 + num_clients // 4


def make_server_optimizer(
  name: str,
  learning_rate: float | Schedule,
  *,
  momentum: float = 0.9,
  b1: float = 0.9,
  b2: float = 0.999,
) -> optax.GradientTransformation:
  """Builds the optimizer that applies the averaged hypernetwork delta."""
  schedule = as_schedule(learning_rate, "server learning_rate")
  if name == "sgd":
    return optax.sgd(schedule)
  if name == "momentum":
    return optax.sgd(schedule, momentum=momentum)
  if name == "adam":
    return optax.adam(schedule, b1=b1, b2=b2)
  raise ValueError(
    f"algorithm.server_optimizer={name!r} is unknown; use one of "
    f"{SERVER_OPTIMIZERS}."
  )


def server_optimizer_from_config(
  config: ml_collections.ConfigDict,
  learning_rate: float | Schedule,
  default: str = "sgd",
) -> optax.GradientTransformation:
  """Reads `algorithm.server_optimizer` and `config.server`'s settings."""
  server = config.get("server", ml_collections.ConfigDict())
  return make_server_optimizer(
    config.algorithm.get("server_optimizer", default),
    learning_rate,
    momentum=float(server.get("momentum", 0.9)),
    b1=float(server.get("b1", 0.9)),
    b2=float(server.get("b2", 0.999)),
  )


def target_params_shape(model: Model, data: FederatedData) -> PyTree:
  """Returns the target model's "params" as `ShapeDtypeStruct`s."""
  sample = jax.ShapeDtypeStruct((1, *data.feature_shape), data.train.x.dtype)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), sample)
  return variables["params"]


def make_hypernetwork(
  config: PFedHNConfig, target_params: PyTree, num_clients: int
) -> Hypernetwork:
  """Builds the hypernetwork that generates a whole client model."""
  embedding_dim = config.embedding_dim or default_embedding_dim(num_clients)
  return hypernetwork(
    target_params,
    embedding_dim,
    hidden_sizes=config.hidden_sizes,
    output_scale=config.output_scale,
  )


def generated_variables(hyper: Hypernetwork, phi, embedding, model_state):
  """Returns `{"params": H_phi(embedding), **model_state}`."""
  return {"params": hyper.generate(phi, embedding), **model_state}


def pfedhn_hooks(hyper: Hypernetwork, embedding_learning_rate: float):
  """Returns the hooks that train generated weights and send `delta_phi`."""

  def start_variables(context):
    embedding = context.client_state["embedding"]
    return generated_variables(
      hyper, context.params, embedding, context.model_state
    )

  def finish(context, result, update):
    embedding = context.client_state["embedding"]
    theta, vjp = jax.vjp(hyper.generate, context.params, embedding)
    local_delta = otu.tree_sub(result.params, theta)
    phi_delta, embedding_delta = vjp(local_delta)
    new_embedding = embedding + embedding_learning_rate * embedding_delta
    return update._replace(
      delta=phi_delta, client_state={"embedding": new_embedding}
    )

  return ClientHooks(start_variables=start_variables, finish=finish)


def with_generated_models(
  base: FederatedAlgorithm, hyper: Hypernetwork, num_clients: int
) -> FederatedAlgorithm:
  """Adds the hypernetwork and embeddings to `base`'s init and evaluation.

  `init` receives the target model's variables: the hypernetwork starts
  from their "params" and the embeddings from N(0, 1).
  """

  def init(rng, variables):
    phi_key, embedding_key = jax.random.split(rng)
    phi = hyper.init(phi_key, variables["params"])
    state = base.init(rng, {**variables, "params": phi})
    embeddings = jax.random.normal(
      embedding_key, (num_clients, hyper.descriptor_dim), jnp.float32
    )
    return state._replace(client_states={"embedding": embeddings})

  def global_variables(state):
    mean_embedding = jnp.mean(state.client_states["embedding"], axis=0)
    return generated_variables(
      hyper, state.params, mean_embedding, state.model_state
    )

  def client_variables(state):
    params = jax.vmap(hyper.generate, in_axes=(None, 0))(
      state.params, state.client_states["embedding"]
    )
    model_state = tree_lib.stack_trees(state.model_state, num_clients)
    return {"params": params, **model_state}

  return base._replace(
    init=init,
    global_variables=global_variables,
    client_variables=client_variables,
  )


def pfedhn(
  model: Model,
  num_clients: int,
  *,
  target_params: PyTree,
  config: PFedHNConfig | None = None,
  client: ClientConfig,
  cohort: CohortConfig,
  server_optimizer: optax.GradientTransformation,
  aggregator: Aggregator | None = None,
  dataset_name: str = "the dataset",
) -> FederatedAlgorithm:
  """pFedHN on the FedAvg round; the global "params" are the hypernetwork's.

  Args:
    model: The target network whose weights the hypernetwork generates.
    num_clients: Clients in the population.
    target_params: The target's "params" tree (arrays or
      `ShapeDtypeStruct`s), for the hypernetwork's output shape.
    config: pFedHN's choices; the defaults of `PFedHNConfig` if None.
    client: Local training settings (on the generated weights).
    cohort: Cohort sampling and weighting.
    server_optimizer: Applied to the averaged `delta_phi`.
    aggregator: Replaces the weighted mean of `delta_phi`.
    dataset_name: Used in error messages.
  """
  config = config or PFedHNConfig()
  hyper = make_hypernetwork(config, target_params, num_clients)
  base = build_fedavg_family(
    model,
    num_clients,
    client=client,
    cohort=cohort,
    server_optimizer=server_optimizer,
    hooks=pfedhn_hooks(hyper, config.embedding_learning_rate),
    aggregator=aggregator,
    dataset_name=dataset_name,
  )
  return with_generated_models(base, hyper, num_clients)


def pfedhn_config(config: ml_collections.ConfigDict) -> PFedHNConfig:
  """Reads pFedHN's settings from `config.algorithm`, with defaults."""
  defaults = PFedHNConfig()
  section = config.algorithm
  return PFedHNConfig(
    embedding_dim=int(section.get("embedding_dim", defaults.embedding_dim)),
    hidden_sizes=tuple(section.get("hidden_sizes", defaults.hidden_sizes)),
    output_scale=float(section.get("output_scale", defaults.output_scale)),
    embedding_learning_rate=float(
      section.get("embedding_learning_rate", defaults.embedding_learning_rate)
    ),
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
  """Builds pFedHN from `config.algorithm` (fields of `PFedHNConfig`).

  `algorithm.server_optimizer` ("sgd", "momentum" or "adam") picks the
  server step.
  """
  settings = pfedhn_config(config)
  if settings.embedding_learning_rate < 0:
    raise ValueError(
      "algorithm.embedding_learning_rate="
      f"{settings.embedding_learning_rate} must be non-negative."
    )
  return pfedhn(
    model,
    data.num_clients,
    target_params=target_params_shape(model, data),
    config=settings,
    client=client,
    cohort=cohort,
    server_optimizer=server_optimizer_from_config(config, server_learning_rate),
    aggregator=aggregator,
    dataset_name=dataset_name,
  )
