"""Compressed FedAvg-family rounds and their exact byte counts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med import compression, losses
from fedjax_med.algorithms import fedavg as fedavg_lib
from fedjax_med.algorithms import registry, scaffold
from fedjax_med.algorithms.settings import CompressionConfig
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.models.base import from_flax
from tests import toy

KEY = jax.random.PRNGKey(0)


class _VectorModel(nn.Module):
  """Outputs one trainable vector `w` of size 2 for every example."""

  @nn.compact
  def __call__(self, x, train=False):
    w = self.param("w", nn.initializers.zeros, (2,))
    return jnp.broadcast_to(w, (x.shape[0], 2))


def _vector_problem(targets):
  """Client k minimizes `0.5 ||w - targets[k]||^2` (label k on every row)."""
  table = jnp.asarray(targets, jnp.float32)

  def loss_fn(logits, labels):
    return 0.5 * jnp.sum((logits - table[labels]) ** 2, axis=-1)

  clients = [
    (np.zeros((4, 1), np.float32), np.full((4,), k, np.int32))
    for k in range(len(targets))
  ]
  data = FederatedData.from_clients(
    clients, clients, num_classes=len(targets), name="vector_quadratic"
  )
  model = from_flax(_VectorModel(), num_outputs=2)
  return model, data, loss_fn


def _run(algorithm, data, variables, rounds, seed=0):
  state = algorithm.init(KEY, variables)
  run_round = jax.jit(algorithm.run_round)
  history = []
  for r in range(rounds):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), r)
    state, metrics = run_round(state, data, key)
    history.append(metrics)
  return state, history


def _client(lr=0.1, steps=1, batch=16, loss_fn=losses.cross_entropy, **kw):
  return fedavg_lib.ClientConfig(
    learning_rate=lr,
    num_local_steps=steps,
    batch_size=batch,
    loss_fn=loss_fn,
    **kw,
  )


def _vector_fedavg(targets, compression_config, lr=0.1):
  model, data, loss_fn = _vector_problem(targets)
  algorithm = fedavg_lib.fedavg(
    model,
    len(targets),
    client=_client(lr=lr, loss_fn=loss_fn, compression=compression_config),
    cohort=fedavg_lib.CohortConfig(len(targets), weighting="uniform"),
  )
  return algorithm, data, {"params": {"w": jnp.zeros(2)}}


def test_error_feedback_restores_convergence():
  # Targets (2, 1) and (-2, 1), optimum w* = (0, 1). From w = 0 each
  # client's delta is 0.1 * (+-2, 1), whose largest entry is the first, so
  # plain top-1 sends (+-0.2, 0), the two cancel, and w never moves. With
  # error feedback the second entry builds up in the residual until it is
  # sent.
  targets = [(2.0, 1.0), (-2.0, 1.0)]
  plain = CompressionConfig(uplink=compression.top_k(k=1))
  feedback = CompressionConfig(
    uplink=compression.error_feedback(compression.top_k(k=1))
  )

  def excess_loss(w):
    return 0.5 * float(w[1] - 1.0) ** 2 + 0.5 * float(w[0]) ** 2

  algorithm, data, variables = _vector_fedavg(targets, plain)
  stalled, _ = _run(algorithm, data, variables, 60)
  np.testing.assert_array_equal(stalled.params["w"], [0.0, 0.0])
  assert excess_loss(stalled.params["w"]) == 0.5

  algorithm, data, variables = _vector_fedavg(targets, feedback)
  converged, _ = _run(algorithm, data, variables, 60)
  assert excess_loss(converged.params["w"]) < 0.02


def test_downlink_sends_change_since_last_broadcast():
  # Targets (3, 1) and (1, 1), one local step at lr 0.5, uniform mean.
  # Round 1 starts from the initial model 0 (no change to send), so
  # w1 = mean(0.5 * (b_k - 0)) = (1, 0.5). Round 2 broadcasts top-1 of
  # w1 - 0, i.e. w_hat = (1, 0); clients step from w_hat to deltas (1, 0.5)
  # and (0, 0.5), so w2 = w1 + (0.5, 0.5) = (1.5, 1.0).
  downlink = CompressionConfig(downlink=compression.top_k(k=1))
  algorithm, data, variables = _vector_fedavg(
    [(3.0, 1.0), (1.0, 1.0)], downlink, lr=0.5
  )
  state, history = _run(algorithm, data, variables, 2)
  np.testing.assert_allclose(state.params["w"], [1.5, 1.0], rtol=1e-6)
  np.testing.assert_array_equal(
    state.compression["downlink"]["model"]["w"], [1.0, 0.0]
  )
  # One float32 value and one int32 index for each of the two clients.
  assert int(history[1]["downlink_bytes"]) == 2 * 8


def _logistic(build=fedavg_lib.fedavg, sizes=(30, 12, 25, 20), **client_kw):
  data = toy.random_binary_data(list(sizes))
  model = toy.logistic_model()
  variables = model.init(KEY, jnp.zeros((1, 5)))
  algorithm = build(
    model,
    len(sizes),
    client=_client(lr=0.2, steps=3, batch=8, **client_kw),
    cohort=fedavg_lib.CohortConfig(len(sizes)),
  )
  return algorithm, data, variables


@pytest.mark.parametrize("build", [fedavg_lib.fedavg, scaffold.scaffold])
def test_identity_compressor_equals_uncompressed_bitwise(build):
  identity = CompressionConfig(
    uplink=compression.identity(), downlink=compression.identity()
  )
  algorithm, data, variables = _logistic(build)
  reference, _ = _run(algorithm, data, variables, 3)
  algorithm, data, variables = _logistic(build, compression=identity)
  compressed, _ = _run(algorithm, data, variables, 3)
  jax.tree.map(np.testing.assert_array_equal, reference, compressed)


# Logistic regression on 5 features: kernel [5, 1] and bias [1], 24 bytes
# in float32. Client 2 has no rows, so 3 of the 4 sampled clients send.
@pytest.mark.parametrize(
  "build, links, uplink, downlink",
  [
    # Delta plus the float32 weight; the model down.
    (fedavg_lib.fedavg, {}, 3 * (24 + 4), 4 * 24),
    # QSGD with 16 levels: 6 bits each, ceil(30 / 8) + 4 for the kernel
    # and ceil(6 / 8) + 4 for the bias, 13 bytes.
    (
      fedavg_lib.fedavg,
      {"uplink": compression.qsgd(16), "downlink": compression.qsgd(16)},
      3 * (13 + 4),
      4 * 13,
    ),
    # SCAFFOLD also sends its control-variate change up and receives the
    # server control variate.
    (scaffold.scaffold, {}, 3 * (24 + 4 + 24), 4 * (24 + 24)),
  ],
)
def test_byte_metrics_exact(build, links, uplink, downlink):
  algorithm, data, variables = _logistic(
    build, sizes=(30, 12, 0, 20), compression=CompressionConfig(**links)
  )
  _, history = _run(algorithm, data, variables, 2)
  for metrics in history:
    assert int(metrics["uplink_bytes"]) == uplink
    assert int(metrics["downlink_bytes"]) == downlink


def test_error_feedback_composes_with_client_states():
  # SCAFFOLD's control variates stay in client_states and the residuals go
  # to compression["uplink"]; the client with no rows keeps a zero residual.
  feedback = CompressionConfig(
    uplink=compression.error_feedback(compression.top_k(k=2))
  )
  algorithm, data, variables = _logistic(
    scaffold.scaffold, sizes=(30, 12, 0, 20), compression=feedback
  )
  state, _ = _run(algorithm, data, variables, 2)
  residual, _ = state.compression["uplink"]
  kernel = np.asarray(residual["Dense_0"]["kernel"])
  assert kernel.shape == (4, 5, 1)
  assert np.all(kernel[2] == 0)
  assert np.all(np.count_nonzero(kernel[[0, 1, 3]], axis=(1, 2)) > 0)
  controls = state.client_states["Dense_0"]["kernel"]
  assert controls.shape == (4, 5, 1)


def test_compressed_round_compiles_once():
  links = CompressionConfig(
    uplink=compression.error_feedback(compression.top_k(fraction=0.5)),
    downlink=compression.rotated_quantization(8),
  )
  schedule = optax.exponential_decay(0.1, transition_steps=1, decay_rate=0.9)
  for build in (fedavg_lib.fedavg, scaffold.scaffold):
    algorithm, data, variables = _logistic(
      build, compression=links, sizes=(37, 50, 64, 37)
    )
    algorithm = build(
      toy.logistic_model(),
      4,
      client=_client(lr=schedule, steps=3, batch=16, compression=links),
      cohort=fedavg_lib.CohortConfig(2, clients_per_chunk=1),
    )
    traces = []

    def counted(state, data, key, algorithm=algorithm, traces=traces):
      traces.append(1)
      return algorithm.run_round(state, data, key)

    run_round = jax.jit(counted)
    state = algorithm.init(KEY, variables)
    for r in range(4):
      state, _ = run_round(state, data, jax.random.fold_in(KEY, r))
    assert len(traces) == 1


def test_same_seed_gives_identical_bits():
  links = CompressionConfig(
    uplink=compression.qsgd(2), downlink=compression.qsgd(4)
  )

  def final(seed):
    algorithm, data, variables = _logistic(compression=links)
    return _run(algorithm, data, variables, 3, seed=seed)[0]

  first, second = final(0), final(0)
  jax.tree.map(np.testing.assert_array_equal, first, second)
  other = final(1)
  assert not np.array_equal(
    first.params["Dense_0"]["kernel"], other.params["Dense_0"]["kernel"]
  )


def _config(**compression_sections):
  from configs import fed_heart_disease

  config = fed_heart_disease.get_config()
  config.compression = {
    link: dict(section) for link, section in compression_sections.items()
  }
  return config


def test_registry_reads_compression_sections():
  config = _config(
    uplink={"name": "top_k", "k": 3}, downlink={"name": "identity"}
  )
  links = registry.compression_config(config)
  assert links.downlink is None
  assert links.uplink.num_bytes({"w": jnp.zeros(10)}) == 24
  assert registry.compression_config(_config()) == CompressionConfig()


def test_registry_rejects_compression_with_secure_aggregation():
  config = _config(uplink={"name": "qsgd"})
  config.privacy.secure_aggregation = True
  with pytest.raises(ValueError, match="compression.uplink.name='qsgd'"):
    registry.compression_config(config)
  config.compression.uplink.name = "identity"
  config.compression.downlink = {"name": "qsgd"}
  assert registry.compression_config(config).downlink is not None


def _experiment_config(num_rounds):
  from configs import fed_heart_disease_compressed

  config = fed_heart_disease_compressed.get_config()
  config.num_rounds = num_rounds
  config.eval_every = 3
  config.checkpoint_every = 3
  config.progress_bar = False
  # Error feedback puts per-client residuals into the checkpoint.
  config.compression.uplink.error_feedback = True
  return config


def _checkpoint_state(workdir, round_index):
  from fedjax_med.training import experiment
  from fedjax_med.training.checkpoint import Checkpointer

  config = _experiment_config(round_index)
  data = experiment.load_data(config)
  model = experiment.build_model(config, data)
  algorithm = registry.build_algorithm(config, model, data)
  state_like = algorithm.init(KEY, model.init(KEY, data.train.x[0, :1]))
  checkpointer = Checkpointer(str(workdir))
  state, _ = checkpointer.restore(round_index, state_like, KEY)
  checkpointer.close()
  return state


def test_resume_equals_uninterrupted_run_with_bytes(tmp_path):
  from fedjax_med.training import experiment

  straight = experiment.run_experiment(
    _experiment_config(6), str(tmp_path / "straight")
  )
  experiment.run_experiment(_experiment_config(3), str(tmp_path / "resumed"))
  resumed = experiment.run_experiment(
    _experiment_config(6), str(tmp_path / "resumed"), resume=True
  )
  a = _checkpoint_state(tmp_path / "straight", 6)
  b = _checkpoint_state(tmp_path / "resumed", 6)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert jax.tree.leaves(b.compression["uplink"])
  # 14 float32 parameters (13 features and a bias) and 4 sites. Up: QSGD
  # at 6 bits, ceil(78 / 8) + 4 and ceil(6 / 8) + 4, plus the weight.
  for final in (straight, resumed):
    assert final["total_uplink_bytes"] == 6 * 4 * (14 + 5 + 4)
    assert final["total_downlink_bytes"] == 6 * 4 * 14 * 4
