"""Gossip averaging, D-PSGD and CHOCO-SGD against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import fed_heart_disease_choco
from fedjax_med import losses
from fedjax_med.algorithms import fedavg as fedavg_lib
from fedjax_med.algorithms.registry import build_algorithm
from fedjax_med.decentralized import algorithms, compressors, gossip, topology
from fedjax_med.training import experiment
from fedjax_med.training.checkpoint import Checkpointer
from tests import toy

KEY = jax.random.PRNGKey(0)


def _client(lr=0.1, steps=1, batch=1000, loss_fn=toy.squared_error):
  return fedavg_lib.ClientConfig(
    learning_rate=lr,
    num_local_steps=steps,
    batch_size=batch,
    loss_fn=loss_fn,
  )


def _run(algorithm, data, variables, rounds, seed=0):
  state = algorithm.init(KEY, variables)
  run_round = jax.jit(algorithm.run_round)
  history = []
  for r in range(rounds):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), r)
    state, metrics = run_round(state, data, key)
    history.append(metrics)
  return state, history


def _logistic():
  model = toy.logistic_model()
  return model, model.init(KEY, jnp.zeros((1, 5)))


# Gossip without gradients.


def test_consensus_distance_by_hand():
  # Nodes at 0 and 2 (first leaf) and at 1 and 1 (second): mean squared
  # distance to the average is (1 + 1) / 2 + 0.
  tree = {"a": jnp.array([0.0, 2.0]), "b": jnp.array([[1.0], [1.0]])}
  assert float(gossip.consensus_distance(tree)) == pytest.approx(1.0)


def _second_eigenvector(mixing):
  values, vectors = np.linalg.eigh(mixing)
  order = np.argsort(-np.abs(values))
  return values[order[1]], vectors[:, order[1]]


@pytest.mark.parametrize(
  "name, num_nodes, options",
  [
    ("ring", 8, {}),
    ("torus", 16, {}),
    ("random_regular", 12, {"degree": 3, "seed": 2}),
  ],
)
def test_gossip_aligned_start_decays_at_lambda_2(name, num_nodes, options):
  # Starting on the eigenvector of lambda_2, every step multiplies the
  # consensus distance by exactly lambda_2^2 = (1 - gap)^2.
  graph = topology.make_graph(name, num_nodes, **options)
  lambda_2, vector = _second_eigenvector(graph.mixing_matrix)
  assert abs(lambda_2) == pytest.approx(1 - graph.spectral_gap, abs=1e-12)
  x = {"w": jnp.asarray(np.outer(vector, [1.0, -2.0]) + 3.0, jnp.float32)}
  step = jax.jit(lambda x: gossip.gossip_step(graph.mixing_matrix, x))
  distances = [float(gossip.consensus_distance(x))]
  for _ in range(10):
    x = step(x)
    distances.append(float(gossip.consensus_distance(x)))
  ratios = np.array(distances[1:]) / np.array(distances[:-1])
  np.testing.assert_allclose(ratios, lambda_2**2, rtol=1e-3)


def test_gossip_random_start_rate_on_ring():
  # From a random start the deviation from the average shrinks by at most
  # |lambda_2| per step, and its slowest eigen-component (lambda_2, here a
  # double eigenvalue) dominates once the others, with |lambda| <= 1/3,
  # have died out: the measured per-step rate tends to (1 - gap)^2.
  graph = topology.make_graph("ring", 8)
  rate = (1 - graph.spectral_gap) ** 2
  x = jax.random.normal(KEY, (8, 5))
  step = jax.jit(lambda x: gossip.gossip_step(graph.mixing_matrix, x))
  distances = [float(gossip.consensus_distance(x))]
  for _ in range(30):
    x = step(x)
    distances.append(float(gossip.consensus_distance(x)))
  distances = np.array(distances)
  bound = distances[0] * rate ** np.arange(31)
  assert np.all(distances <= bound * (1 + 1e-4))
  measured = (distances[30] / distances[10]) ** (1 / 20)
  assert measured == pytest.approx(rate, rel=1e-3)


def test_gossip_preserves_average():
  graph = topology.make_graph("random_regular", 10, degree=3, seed=0)
  with jax.enable_x64(True):
    x = jax.random.normal(KEY, (10, 4), jnp.float64)
    mixed = x
    for _ in range(5):
      mixed = gossip.gossip_step(graph.mixing_matrix, mixed)
    np.testing.assert_allclose(
      jnp.mean(mixed, axis=0), jnp.mean(x, axis=0), rtol=0, atol=1e-14
    )
  x32 = jax.random.normal(KEY, (10, 4))
  mixed = gossip.gossip_step(graph.mixing_matrix, x32)
  np.testing.assert_allclose(
    jnp.mean(mixed, axis=0), jnp.mean(x32, axis=0), atol=1e-6
  )


def test_choco_gossip_identity_is_exact_gossip():
  graph = topology.make_graph("ring", 6)
  x = {"w": jax.random.normal(KEY, (6, 3))}
  exact = x
  public = jax.tree.map(jnp.zeros_like, x)
  for t in range(4):
    exact = gossip.gossip_step(graph.mixing_matrix, exact)
    x, public = gossip.choco_gossip_step(
      graph.mixing_matrix,
      x,
      public,
      jax.random.fold_in(KEY, t),
      compressors.identity(),
      1.0,
    )
    np.testing.assert_allclose(x["w"], exact["w"], atol=1e-6)


def test_choco_gossip_compressed_reaches_consensus():
  # With 4-bit qsgd every step still preserves the average exactly
  # (sum_ij W_ij (x^_j - x^_i) = 0), and the nodes reach consensus.
  graph = topology.make_graph("ring", 6)
  x = {"w": jax.random.normal(KEY, (6, 20))}
  mean = jnp.mean(x["w"], axis=0)
  public = jax.tree.map(jnp.zeros_like, x)
  start = float(gossip.consensus_distance(x))
  step = jax.jit(
    lambda x, public, key: gossip.choco_gossip_step(
      graph.mixing_matrix, x, public, key, compressors.qsgd(8), 0.3
    )
  )
  for t in range(150):
    x, public = step(x, public, jax.random.fold_in(KEY, t))
  np.testing.assert_allclose(jnp.mean(x["w"], axis=0), mean, atol=1e-5)
  assert float(gossip.consensus_distance(x)) < 1e-4 * start


# Compressors.


def test_top_k_keeps_largest_entries():
  x = jnp.array([0.1, -5.0, 0.3, 2.0, -0.2, 0.0, 1.0, 0.05, -0.4, 0.6])
  kept = compressors.top_k(0.3).compress(KEY, x)
  expected = jnp.array([0, -5.0, 0, 2.0, 0, 0, 1.0, 0, 0, 0])
  np.testing.assert_array_equal(kept, expected)


def test_qsgd_contracts():
  # Rescaled QSGD: E||Q(x) - x||^2 <= (1 - 1/tau) ||x||^2.
  x = jax.random.normal(KEY, (50,))
  levels = 4
  tau = 1 + min(50 / levels**2, np.sqrt(50) / levels)
  keys = jax.random.split(jax.random.PRNGKey(1), 4000)
  quantized = jax.vmap(compressors.qsgd(levels).compress, (0, None))(keys, x)
  error = float(jnp.mean(jnp.sum((quantized - x) ** 2, axis=1)))
  assert error <= (1 - 1 / tau) * float(jnp.sum(x**2))
  # Unbiased up to the 1/tau scale.
  np.testing.assert_allclose(
    tau * jnp.mean(quantized, axis=0), x, atol=0.15 * float(jnp.abs(x).max())
  )


@pytest.mark.parametrize(
  "compressor, shape, expected",
  [
    (compressors.identity(), (13, 1), 52),
    (compressors.top_k(0.1), (100,), 10 * (4 + 4)),
    (compressors.top_k(0.9), (10,), 40),  # Dense is smaller than pairs.
    # 4 bytes of norm, then 13 entries of 1 sign + 5 level bits.
    (compressors.qsgd(16), (13, 1), 4 + 10),
  ],
)
def test_payload_bytes(compressor, shape, expected):
  assert compressor.payload_bytes(shape, np.float32) == expected


# D-PSGD and CHOCO-SGD.


def _dpsgd_reference(mixing, targets, sizes, lr, steps, rounds, order):
  """Numpy D-PSGD on node losses (w - b_i)^2; empty nodes do not move."""
  x = np.zeros(len(targets))
  has_data = np.asarray(sizes) > 0
  for _ in range(rounds):
    trained = x.copy()
    for _ in range(steps):
      trained = trained - lr * 2 * (trained - targets) * has_data
    if order == "adapt_then_combine":
      x = mixing @ trained
    else:
      x = mixing @ x + (trained - x)
  return x


@pytest.mark.parametrize("order", algorithms.ORDERS)
@pytest.mark.parametrize("name", ["ring", "complete"])
def test_dpsgd_matches_reference(order, name):
  targets, sizes = np.array([1.0, 5.0, 2.0, 7.0]), [4, 0, 6, 3]
  data = toy.quadratic_data([1, 5, 2, 7], sizes)
  graph = topology.make_graph(name, 4)
  algorithm = algorithms.dpsgd(
    toy.scalar_model(),
    graph.mixing_matrix,
    client=_client(steps=2),
    order=order,
  )
  state, history = _run(algorithm, data, {"params": {"w": jnp.zeros(())}}, 3)
  expected = _dpsgd_reference(
    graph.mixing_matrix, targets, sizes, 0.1, 2, 3, order
  )
  np.testing.assert_allclose(state.variables["params"]["w"], expected, 1e-5)
  average = algorithm.global_variables(state)["params"]["w"]
  assert float(average) == pytest.approx(expected.mean(), rel=1e-5)
  distance = np.mean((expected - expected.mean()) ** 2)
  assert float(history[-1]["consensus_distance"]) == pytest.approx(
    distance, rel=1e-4
  )


def test_dpsgd_complete_graph_is_fedavg():
  # W = 11^T / n and adapt-then-combine: every node has the uniform
  # FedAvg model after every round.
  data = toy.random_binary_data([30, 12, 25, 8])
  model, variables = _logistic()
  client = _client(lr=0.3, steps=3, loss_fn=losses.cross_entropy)
  decentralized = algorithms.dpsgd(
    model,
    np.full((4, 4), 0.25),
    client=client,
    order="adapt_then_combine",
  )
  fedavg = fedavg_lib.fedavg(
    model,
    4,
    client=client,
    cohort=fedavg_lib.CohortConfig(clients_per_round=4, weighting="uniform"),
  )
  node_state = decentralized.init(KEY, variables)
  server_state = fedavg.init(KEY, variables)
  for r in range(3):
    key = jax.random.fold_in(KEY, r)
    node_state, _ = jax.jit(decentralized.run_round)(node_state, data, key)
    server_state, _ = jax.jit(fedavg.run_round)(server_state, data, key)
    for leaf, global_leaf in zip(
      jax.tree.leaves(node_state.variables["params"]),
      jax.tree.leaves(server_state.params),
      strict=True,
    ):
      for node in range(4):
        np.testing.assert_allclose(leaf[node], global_leaf, atol=1e-6)


def test_choco_identity_equals_dpsgd():
  data = toy.random_binary_data([30, 12, 25, 8, 19])
  model, variables = _logistic()
  graph = topology.make_graph("ring", 5)
  client = _client(lr=0.2, steps=3, batch=8, loss_fn=losses.cross_entropy)
  dpsgd_state, _ = _run(
    algorithms.dpsgd(
      model, graph.mixing_matrix, client=client, order="adapt_then_combine"
    ),
    data,
    variables,
    4,
  )
  choco_state, history = _run(
    algorithms.choco_sgd(
      model,
      graph.mixing_matrix,
      client=client,
      compressor=compressors.identity(),
      consensus_step_size=1.0,
    ),
    data,
    variables,
    4,
  )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
    choco_state.variables,
    dpsgd_state.variables,
  )
  assert float(history[-1]["consensus_distance"]) > 0


def test_byte_metrics_are_exact():
  # Ring of 4: every node sends to 2 neighbours, 8 messages per round.
  # A logistic model has 5 + 1 float32 parameters.
  data = toy.random_binary_data([10, 10, 10, 10])
  model, variables = _logistic()
  graph = topology.make_graph("ring", 4)
  client = _client(loss_fn=losses.cross_entropy)
  _, dense = _run(
    algorithms.dpsgd(model, graph.mixing_matrix, client=client),
    data,
    variables,
    1,
  )
  assert int(dense[0]["uplink_bytes"]) == 8 * 6 * 4
  assert int(dense[0]["downlink_bytes"]) == 8 * 6 * 4
  _, quantized = _run(
    algorithms.choco_sgd(
      model,
      graph.mixing_matrix,
      client=client,
      compressor=compressors.qsgd(16),
      consensus_step_size=0.5,
    ),
    data,
    variables,
    1,
  )
  # Per message: the kernel (5 entries, 4 + 4 bytes) and the bias (4 + 1).
  assert int(quantized[0]["uplink_bytes"]) == 8 * (8 + 5)
  assert int(quantized[0]["downlink_bytes"]) == 8 * (8 + 5)


def _choco_qsgd(model, mixing, clients_per_chunk=None):
  schedule = optax.exponential_decay(0.2, transition_steps=1, decay_rate=0.9)
  return algorithms.choco_sgd(
    model,
    mixing,
    client=_client(lr=schedule, steps=3, batch=8, loss_fn=losses.cross_entropy),
    compressor=compressors.qsgd(4),
    consensus_step_size=0.4,
    clients_per_chunk=clients_per_chunk,
  )


def test_round_compiles_once():
  data = toy.random_binary_data([37, 50, 64, 37])
  model, variables = _logistic()
  mixing = topology.make_graph("ring", 4).mixing_matrix
  for algorithm in (
    algorithms.dpsgd(
      model,
      mixing,
      client=_client(lr=0.1, steps=3, batch=16, loss_fn=losses.cross_entropy),
    ),
    _choco_qsgd(model, mixing, clients_per_chunk=1),
  ):
    traces = []

    def counted(state, data, key, algorithm=algorithm, traces=traces):
      traces.append(1)
      return algorithm.run_round(state, data, key)

    run_round = jax.jit(counted)
    state = algorithm.init(KEY, variables)
    for r in range(5):
      state, _ = run_round(state, data, jax.random.fold_in(KEY, r))
    assert len(traces) == 1


def test_same_seed_same_bits():
  data = toy.random_binary_data([30, 12, 25, 8, 19, 40])
  model, variables = _logistic()
  mixing = topology.make_graph("random_regular", 6, degree=3).mixing_matrix
  # One algorithm object, so its jitted round compiles once for all seeds.
  algorithm = _choco_qsgd(model, mixing)
  first, _ = _run(algorithm, data, variables, 3, seed=4)
  second, _ = _run(algorithm, data, variables, 3, seed=4)
  other, _ = _run(algorithm, data, variables, 3, seed=5)
  jax.tree.map(np.testing.assert_array_equal, first, second)
  kernel = first.variables["params"]["Dense_0"]["kernel"]
  other_kernel = other.variables["params"]["Dense_0"]["kernel"]
  assert np.max(np.abs(kernel - other_kernel)) > 1e-4
  # A node's result does not depend on how many nodes are vmapped together.
  chunked, _ = _run(
    _choco_qsgd(model, mixing, clients_per_chunk=4), data, variables, 3, 4
  )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
    chunked.variables,
    first.variables,
  )


def test_client_and_global_variables():
  data = toy.quadratic_data([1, 5, 2], [3, 3, 3])
  algorithm = algorithms.dpsgd(
    toy.scalar_model(),
    topology.make_graph("ring", 3).mixing_matrix,
    client=_client(),
  )
  state, _ = _run(algorithm, data, {"params": {"w": jnp.zeros(())}}, 2)
  personal = algorithm.client_variables(state)["params"]["w"]
  assert personal.shape == (3,)
  average = algorithm.global_variables(state)["params"]["w"]
  assert float(average) == pytest.approx(float(jnp.mean(personal)))


def test_resume_equals_uninterrupted_run(tmp_path):
  def config(num_rounds):
    config = fed_heart_disease_choco.get_config()
    config.num_rounds = num_rounds
    config.eval_every = 100
    config.checkpoint_every = 3
    config.progress_bar = False
    return config

  straight = tmp_path / "straight"
  experiment.run_experiment(config(6), str(straight))
  resumed = tmp_path / "resumed"
  experiment.run_experiment(config(3), str(resumed))
  experiment.run_experiment(config(6), str(resumed), resume=True)

  def restore(workdir):
    data = experiment.load_data(config(6))
    model = experiment.build_model(config(6), data)
    algorithm = build_algorithm(config(6), model, data)
    state_like = algorithm.init(KEY, model.init(KEY, data.train.x[0, :1]))
    checkpointer = Checkpointer(str(workdir))
    state, _ = checkpointer.restore(6, state_like, KEY)
    checkpointer.close()
    return state

  a, b = restore(straight), restore(resumed)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert int(b.round) == 6


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"cohort.weighting": "example"}, "weighting='example'"),
    ({"cohort.clients_per_round": 2}, "clients_per_round=2"),
    ({"privacy.mode": "client"}, "no server"),
    ({"algorithm.order": "sideways"}, "order='sideways'"),
    ({"algorithm.topology": "star"}, "topology='star'"),
  ],
)
def test_from_config_rejects(overrides, message):
  config = fed_heart_disease_choco.get_config()
  config.algorithm.name = "dpsgd"
  config.algorithm.order = "combine_then_adapt"
  config.privacy.target_epsilon = 0.0
  for dotted, value in overrides.items():
    section, field = dotted.split(".")
    config[section][field] = value
  data = experiment.load_data(config)
  model = experiment.build_model(config, data)
  with pytest.raises(ValueError, match=message):
    build_algorithm(config, model, data)


@pytest.mark.parametrize(
  "options, message",
  [
    ({"consensus_step_size": 1.5}, "consensus_step_size=1.5"),
    ({"compressor": "sign"}, "compressor='sign'"),
    ({"top_k_fraction": 0.0, "compressor": "top_k"}, "fraction=0.0"),
  ],
)
def test_choco_from_config_rejects(options, message):
  config = fed_heart_disease_choco.get_config()
  for field, value in options.items():
    config.algorithm[field] = value
  data = experiment.load_data(config)
  model = experiment.build_model(config, data)
  with pytest.raises(ValueError, match=message):
    build_algorithm(config, model, data)
