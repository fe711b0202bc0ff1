"""Decentralized training by gossip: D-PSGD and CHOCO-SGD.

References:
  * X. Lian, C. Zhang, H. Zhang, C.-J. Hsieh, W. Zhang, J. Liu, "Can
    Decentralized Algorithms Outperform Centralized Algorithms? A Case Study
    for Decentralized Parallel Stochastic Gradient Descent", NeurIPS 2017,
    arXiv:1705.09056 (D-PSGD).
  * A. Koloskova, S. U. Stich, M. Jaggi, "Decentralized Stochastic
    Optimization and Gossip Algorithms with Compressed Communication",
    ICML 2019, arXiv:1902.00340 (CHOCO-SGD and CHOCO-Gossip).
  * A. Koloskova, N. Loizou, S. Boreiri, M. Jaggi, S. U. Stich, "A Unified
    Theory of Decentralized SGD with Changing Topology and Local Updates",
    ICML 2020, arXiv:2003.10422 (several local steps between gossip steps).

There is no server. Every node (client) keeps its own model; the state
stacks them on a leading `num_nodes` axis `[n, ...]`. In a round every node
runs `client.num_local_steps` steps of `core.client.local_train` on its own
data from its own model, giving the local update `delta_i = x_i' - x_i`, and
the nodes then gossip with the mixing matrix `W` (`topology.py`):

  D-PSGD, order "combine_then_adapt" (Lian et al., Algorithm 1):
      x_i <- sum_j W_ij x_j + delta_i
  D-PSGD, order "adapt_then_combine":
      x_i <- sum_j W_ij (x_j + delta_j)
  CHOCO-SGD (Koloskova et al. 2019, Algorithm 2), with public copies x^:
      x_i' = x_i + delta_i
      q_i = Q(x_i' - x^_i)            (sent to every neighbour)
      x^_i <- x^_i + q_i              (the node and its neighbours)
      x_i <- x_i' + gamma sum_j W_ij (x^_j - x^_i)

With one local SGD step, `delta_i = -lr * grad F_i(x_i)` and the first line
is exactly Lian et al.'s update. With the identity compressor and
`gamma = 1`, CHOCO-SGD is exactly D-PSGD "adapt_then_combine". On the
complete graph with `W = 11^T / n`, "adapt_then_combine" is FedAvg with
uniform weights and every client in every round.

Metrics per round:
  * `train_loss`: the mean local loss over nodes that have data.
  * `consensus_distance`: `(1/n) sum_i ||x_i - x_bar||^2` over "params"
    after the round's gossip.
  * `uplink_bytes`: the bytes every node sends to its neighbours, summed
    over nodes.
  * `downlink_bytes`: the bytes every node receives, summed over nodes.
  * `client_learning_rate`: this round's local step size.

Choices this implementation makes:
  * Nodes weigh equally: the average the nodes agree on minimizes the
    uniform mean of the local losses, not the example-weighted one, so
    `from_config` requires `cohort.weighting = "uniform"`.
  * Every node trains and gossips in every round; there is no cohort.
  * The whole variables tree is gossiped, non-trainable model state
    ("batch_stats") included; the byte counts include it too.
  * D-PSGD defaults to "combine_then_adapt" because that is the update of
    Lian et al. "adapt_then_combine" (gossip the trained models) is the
    other common form, and it reduces to FedAvg on the complete graph.
  * CHOCO's public copies start at zero, as in Koloskova et al. 2019, so
    the first rounds spend their messages on the model itself.
  * A node sends D-PSGD's dense model, or CHOCO's compressed `q_i`, once to
    each neighbour (there is no broadcast medium), so both byte counts equal
    `sum_i deg_i * message_bytes`.
  * Privacy modes are rejected: neither DP-FedAvg nor secure aggregation
    has a server to run on, and DP-SGD's accounting assumes a server-side
    cohort.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh
from optax import tree_utils as otu

from fedjax_med.algorithms.settings import (
  ClientConfig,
  CohortConfig,
  as_schedule,
  make_client_optimizer,
  validate_client_config,
)
from fedjax_med.core import tree as tree_lib
from fedjax_med.core.algorithm import FederatedAlgorithm
from fedjax_med.core.client import ClientBatch, local_train
from fedjax_med.core.engine import ClientOutput, map_cohort
from fedjax_med.core.sampling import Cohort
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.decentralized import compressors as compressors_lib
from fedjax_med.decentralized import topology
from fedjax_med.decentralized.gossip import (
  choco_gossip_step,
  consensus_distance,
  gossip_step,
)
from fedjax_med.models.base import Model

PyTree = Any
ORDERS = ("combine_then_adapt", "adapt_then_combine")


class DecentralizedState(NamedTuple):
  """State of a decentralized run.

  Attributes:
    variables: Every node's `{"params": ..., **model_state}`, stacked on a
      leading `num_nodes` axis.
    public_copies: CHOCO-SGD's public copies `x^`, stacked like
      `variables`; an empty tuple for D-PSGD.
    round: Rounds completed, int32 scalar.
  """

  variables: PyTree
  public_copies: PyTree
  round: jax.Array


def _message_counts(mixing_matrix: np.ndarray) -> int:
  """Returns the directed links that carry a message, `sum_i deg_i`."""
  off_diagonal = ~np.eye(mixing_matrix.shape[0], dtype=bool)
  return int(np.count_nonzero((mixing_matrix != 0) & off_diagonal))


def _bytes_metric(num_bytes: int) -> jax.Array:
  if num_bytes < 2**31:
    return jnp.asarray(num_bytes, jnp.int32)
  # NOTE: above 2**31 bytes per round the count is rounded to float32.
  return jnp.asarray(float(num_bytes), jnp.float32)


def _build(
  model: Model,
  mixing_matrix: np.ndarray,
  *,
  client: ClientConfig,
  communicate: Callable[..., tuple[PyTree, PyTree]],
  uses_public_copies: bool,
  message_bytes: Callable[[PyTree], int],
  clients_per_chunk: int | None,
  dataset_name: str,
  mesh: Mesh | None = None,
) -> FederatedAlgorithm:
  """Builds a decentralized algorithm around its gossip step.

  `communicate(variables, trained, public_copies, key) -> (variables,
  public_copies)` mixes the nodes' models after local training.
  """
  validate_client_config(client)
  if client.dp_sgd is not None:
    raise ValueError(
      "decentralized training does not support DP-SGD, whose accounting "
      "assumes a server-side cohort; use privacy.mode='none'."
    )
  # `getattr` accepts ClientConfig versions without a compression field.
  compression = getattr(client, "compression", None)
  if compression is not None and any(link is not None for link in compression):
    raise ValueError(
      "the compression section compresses FedAvg-family uplinks and "
      "downlinks, which decentralized methods do not have; remove it, and "
      "use algorithm.name='choco_sgd' with algorithm.compressor for "
      "compressed gossip."
    )
  mixing_matrix = topology.validate_mixing_matrix(mixing_matrix)
  num_nodes = mixing_matrix.shape[0]
  links = _message_counts(mixing_matrix)
  schedule = as_schedule(client.learning_rate, "client learning_rate")

  def init(rng, variables):
    del rng  # Every node starts from the same given variables.
    stacked = tree_lib.stack_trees(variables, num_nodes)
    public_copies = ()
    if uses_public_copies:
      public_copies = jax.tree.map(jnp.zeros_like, stacked)
    return DecentralizedState(
      variables=stacked,
      public_copies=public_copies,
      round=jnp.zeros((), jnp.int32),
    )

  def run_round(state: DecentralizedState, data: FederatedData, rng):
    data = jax.tree.map(jnp.asarray, data)
    if data.train.x.shape[0] != num_nodes:
      raise ValueError(
        f"{dataset_name} has {data.train.x.shape[0]} clients but the "
        f"mixing matrix has {num_nodes} nodes; build the graph with one "
        "node per client."
      )
    train_key, gossip_key = jax.random.split(rng)
    learning_rate = schedule(state.round)
    optimizer = make_client_optimizer(client, learning_rate)

    def node_fn(node_id):
      batch = ClientBatch(
        x=data.train.x[node_id],
        y=data.train.y[node_id],
        num_examples=data.train.num_examples[node_id],
      )
      result = local_train(
        model,
        tree_lib.gather_rows(state.variables, node_id),
        batch,
        jax.random.fold_in(train_key, node_id),
        optimizer=optimizer,
        num_steps=client.num_local_steps,
        batch_size=client.batch_size,
        loss_fn=client.loss_fn,
      )
      has_data = (batch.num_examples > 0).astype(jnp.float32)
      summed = {"loss": has_data * result.mean_loss, "has_data": has_data}
      trained = {"params": result.params, **result.model_state}
      return ClientOutput(summed, trained)

    all_nodes = Cohort(
      client_ids=jnp.arange(num_nodes, dtype=jnp.int32),
      mask=jnp.ones((num_nodes,), bool),
    )
    summed, trained = map_cohort(node_fn, all_nodes, clients_per_chunk, mesh)

    variables, public_copies = communicate(
      state.variables, trained, state.public_copies, gossip_key
    )
    message = message_bytes(jax.tree.map(lambda x: x[0], state.variables))
    new_state = DecentralizedState(
      variables=variables,
      public_copies=public_copies,
      round=state.round + 1,
    )
    nodes_with_data = jnp.maximum(summed["has_data"], 1.0)
    metrics = {
      "train_loss": summed["loss"] / nodes_with_data,
      "consensus_distance": consensus_distance(variables["params"]),
      "uplink_bytes": _bytes_metric(links * message),
      "downlink_bytes": _bytes_metric(links * message),
      "client_learning_rate": learning_rate,
    }
    return new_state, metrics

  def global_variables(state: DecentralizedState):
    return jax.tree.map(lambda x: jnp.mean(x, axis=0), state.variables)

  def client_variables(state: DecentralizedState):
    return state.variables

  return FederatedAlgorithm(init, run_round, global_variables, client_variables)


def _gossiped_bytes(tree: PyTree) -> int:
  """Returns the bytes of the dense floating-point leaves of one model."""
  return sum(
    leaf.size * leaf.dtype.itemsize
    for leaf in jax.tree.leaves(tree)
    if jnp.issubdtype(leaf.dtype, jnp.inexact)
  )


def dpsgd(
  model: Model,
  mixing_matrix: np.ndarray,
  *,
  client: ClientConfig,
  order: str = "combine_then_adapt",
  clients_per_chunk: int | None = None,
  dataset_name: str = "the dataset",
  mesh: Mesh | None = None,
) -> FederatedAlgorithm:
  """D-PSGD: local training on every node, then one gossip step.

  Args:
    model: The network.
    mixing_matrix: `[n, n]` symmetric doubly stochastic `W` with one node
      per client (see `topology.make_graph`).
    client: Local training settings; `num_local_steps=1` with "sgd" is
      D-PSGD's single stochastic gradient step.
    order: "combine_then_adapt" (add the local update to the mixed model)
      or "adapt_then_combine" (mix the trained models).
    clients_per_chunk: Nodes trained together under vmap; None for all.
    dataset_name: Used in error messages.
    mesh: A one-axis device mesh that splits the nodes' training over
      devices, or None for one device.

  Returns:
    The algorithm. `global_variables` is the nodes' average model and
    `client_variables` each node's own model.

  Raises:
    ValueError: For an unknown order, an invalid mixing matrix or invalid
      client settings.
  """
  if order not in ORDERS:
    raise ValueError(f"order={order!r} is unknown; use one of {ORDERS}.")
  mixing_matrix = topology.validate_mixing_matrix(mixing_matrix)
  weights = mixing_matrix.astype(np.float32)

  def communicate(variables, trained, public_copies, key):
    del key
    if order == "adapt_then_combine":
      return gossip_step(weights, trained), public_copies
    delta = otu.tree_sub(trained, variables)
    return otu.tree_add(gossip_step(weights, variables), delta), public_copies

  return _build(
    model,
    mixing_matrix,
    client=client,
    communicate=communicate,
    uses_public_copies=False,
    message_bytes=_gossiped_bytes,
    clients_per_chunk=clients_per_chunk,
    dataset_name=dataset_name,
    mesh=mesh,
  )


def choco_sgd(
  model: Model,
  mixing_matrix: np.ndarray,
  *,
  client: ClientConfig,
  compressor: compressors_lib.Compressor,
  consensus_step_size: float,
  clients_per_chunk: int | None = None,
  dataset_name: str = "the dataset",
  mesh: Mesh | None = None,
) -> FederatedAlgorithm:
  """CHOCO-SGD: local training, then gossip of compressed differences.

  Args:
    model: The network.
    mixing_matrix: `[n, n]` symmetric doubly stochastic `W`.
    client: Local training settings.
    compressor: The operator `Q` applied to `x_i' - x^_i`.
    consensus_step_size: `gamma` in (0, 1]; smaller values tolerate
      coarser compression.
    clients_per_chunk: Nodes trained together under vmap; None for all.
    dataset_name: Used in error messages.
    mesh: A one-axis device mesh that splits the nodes' training over
      devices, or None for one device.

  Returns:
    The algorithm; `global_variables` and `client_variables` as in
    `dpsgd`.

  Raises:
    ValueError: For `gamma` outside (0, 1], an invalid mixing matrix or
      invalid client settings.
  """
  if not 0 < consensus_step_size <= 1:
    raise ValueError(
      f"consensus_step_size={consensus_step_size} must be in (0, 1]; "
      "Koloskova et al. tune it per compressor, e.g. 0.5 for 4-bit qsgd."
    )
  mixing_matrix = topology.validate_mixing_matrix(mixing_matrix)
  weights = mixing_matrix.astype(np.float32)

  def communicate(variables, trained, public_copies, key):
    del variables
    return choco_gossip_step(
      weights, trained, public_copies, key, compressor, consensus_step_size
    )

  return _build(
    model,
    mixing_matrix,
    client=client,
    communicate=communicate,
    uses_public_copies=True,
    message_bytes=lambda tree: compressors_lib.tree_payload_bytes(
      compressor, tree
    ),
    clients_per_chunk=clients_per_chunk,
    dataset_name=dataset_name,
    mesh=mesh,
  )


def graph_from_config(
  section: ml_collections.ConfigDict, num_nodes: int
) -> topology.Graph:
  """Builds the graph named by `config.algorithm` (see `from_config`)."""
  return topology.make_graph(
    section.get("topology", "ring"),
    num_nodes,
    degree=int(section.get("degree", 3)),
    seed=int(section.get("graph_seed", 0)),
    rows=int(section.get("torus_rows", 0)),
  )


def from_config(
  config: ml_collections.ConfigDict,
  model: Model,
  data: FederatedData,
  *,
  client: ClientConfig,
  cohort: CohortConfig,
  server_learning_rate,
  aggregator,
  dataset_name: str,
) -> FederatedAlgorithm:
  """Builds D-PSGD ("dpsgd") or CHOCO-SGD ("choco_sgd") from a config.

  Options in `config.algorithm`, with defaults:
    topology: "ring" (or "torus", "random_regular", "complete").
    degree: 3, the degree of "random_regular".
    graph_seed: 0, the seed of "random_regular".
    torus_rows: 0, the rows of "torus" (0 picks the most nearly square).
    order: "combine_then_adapt" (D-PSGD), or "adapt_then_combine".
    compressor: "qsgd" (CHOCO-SGD), or "top_k", "identity".
    qsgd_levels: 16, the levels of "qsgd" (6 bits per entry with the sign).
    top_k_fraction: 0.1, the share of entries "top_k" keeps.
    consensus_step_size: 0.5, CHOCO's `gamma`.

  Koloskova et al. tune `gamma` per compressor and graph, so no default
  fits every setting. 16-level QSGD with `gamma = 0.5` reaches uncompressed
  D-PSGD's test accuracy on the four Fed-Heart-Disease hospitals on a ring
  (`configs/fed_heart_disease_choco.py`) at about a third of the bytes.

  The server section is unused. `cohort.clients_per_round` must equal the
  number of clients, with "uniform" sampling and weighting, and the
  privacy section must be off.

  Raises:
    ValueError: For settings a serverless method cannot honour.
  """
  del server_learning_rate  # There is no server step.
  name = config.algorithm.name
  if name not in ("dpsgd", "choco_sgd"):
    raise ValueError(
      f"algorithm.name={name!r} is not a decentralized method; use 'dpsgd' "
      "or 'choco_sgd'."
    )
  if aggregator is not None:
    raise ValueError(
      f"{name} has no server, so DP-FedAvg and secure aggregation cannot "
      "run; set privacy.mode='none' and privacy.secure_aggregation=False."
    )
  if cohort.sampling != "uniform" or cohort.clients_per_round != (
    data.num_clients
  ):
    raise ValueError(
      f"{name} trains every node every round, but the cohort is "
      f"sampling={cohort.sampling!r} with clients_per_round="
      f"{cohort.clients_per_round}; set cohort.sampling='uniform' and "
      f"cohort.clients_per_round={data.num_clients}."
    )
  if cohort.weighting != "uniform":
    raise ValueError(
      f"cohort.weighting={cohort.weighting!r}, but gossip with a doubly "
      "stochastic mixing matrix weighs every node equally; set "
      "cohort.weighting='uniform'."
    )
  section = config.algorithm
  graph = graph_from_config(section, data.num_clients)
  common = dict(
    client=client,
    clients_per_chunk=cohort.clients_per_chunk,
    dataset_name=dataset_name,
    mesh=cohort.mesh,
  )
  if name == "dpsgd":
    return dpsgd(
      model,
      graph.mixing_matrix,
      order=section.get("order", "combine_then_adapt"),
      **common,
    )
  compressor = compressors_lib.make_compressor(
    section.get("compressor", "qsgd"),
    fraction=float(section.get("top_k_fraction", 0.1)),
    levels=int(section.get("qsgd_levels", 16)),
  )
  return choco_sgd(
    model,
    graph.mixing_matrix,
    compressor=compressor,
    consensus_step_size=float(section.get("consensus_step_size", 0.5)),
    **common,
  )
