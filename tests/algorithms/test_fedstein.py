"""FedStein: James-Stein shrinkage of the shared normalization statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import fed_heart_disease_fedstein
from fedjax_med import losses
from fedjax_med.algorithms import fedavg as fedavg_lib
from fedjax_med.algorithms import fedbn, fedstein
from fedjax_med.algorithms.registry import build_algorithm
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.training import experiment
from fedjax_med.training.checkpoint import Checkpointer
from tests.algorithms.test_fedbn import (
  NUM_FEATURES,
  bn_model,
  client_config,
  flat,
  run,
  shifted_data,
)

KEY = jax.random.PRNGKey(0)
# Every client has at most 30 rows, so each local step sees all of them.
FULL_BATCH = 32
LR = 0.1


def _cohort():
  return fedavg_lib.CohortConfig(clients_per_round=3, weighting="uniform")


def build_fedstein(**options):
  return fedstein.fedstein(
    bn_model(),
    3,
    client=client_config(lr=LR, steps=2, batch=FULL_BATCH),
    cohort=_cohort(),
    config=fedstein.FedSteinConfig(**options),
  )


def build_fedbn():
  return fedbn.fedbn(
    bn_model(),
    3,
    client=client_config(lr=LR, steps=2, batch=FULL_BATCH),
    cohort=_cohort(),
  )


DEFAULT = build_fedstein()
TRACES = []


def _counted_round(state, data, key):
  TRACES.append(1)
  return DEFAULT.run_round(state, data, key)


# Every test that runs DEFAULT shares this one compilation.
DEFAULT_ROUND = jax.jit(_counted_round)
FEDBN = build_fedbn()
FEDBN_ROUND = jax.jit(FEDBN.run_round)


def _variables():
  return bn_model().init(KEY, jnp.zeros((1, NUM_FEATURES)))


# A crafted vector: c = 5, ||x||^2 = 25, coordinate mean 1.4 and
# ||x - 1.4||^2 = 15.2.
VECTOR = jnp.array([3.0, 4.0, 0.0, 0.0, 0.0])


def test_james_stein_zero_target_closed_form():
  # k = c - 2 = 3, so the factor is 1 - 3 * 2 / 25 = 0.76.
  factor = fedstein.james_stein_factor(VECTOR, 2.0, "zero")
  assert float(factor) == pytest.approx(0.76, rel=1e-6)
  np.testing.assert_allclose(
    fedstein.james_stein(VECTOR, 2.0, "zero"), 0.76 * VECTOR, rtol=1e-6
  )


def test_james_stein_mean_target_closed_form():
  # k = c - 3 = 2, so the factor is 1 - 2 * 2 / 15.2.
  expected_factor = 1.0 - 4.0 / 15.2
  factor = fedstein.james_stein_factor(VECTOR, 2.0, "mean")
  assert float(factor) == pytest.approx(expected_factor, rel=1e-6)
  np.testing.assert_allclose(
    fedstein.james_stein(VECTOR, 2.0, "mean"),
    1.4 + expected_factor * (VECTOR - 1.4),
    rtol=1e-6,
  )


def test_positive_part_clamps_negative_factor():
  # Variance 10 gives 1 - 3 * 10 / 25 = -0.2: the plain estimator flips
  # the vector's sign, the positive part returns the target.
  raw = fedstein.james_stein_factor(VECTOR, 10.0, positive_part=False)
  assert float(raw) == pytest.approx(-0.2, rel=1e-6)
  np.testing.assert_allclose(
    fedstein.james_stein(VECTOR, 10.0, positive_part=False),
    -0.2 * VECTOR,
    rtol=1e-6,
  )
  clamped = fedstein.james_stein_factor(VECTOR, 10.0, positive_part=True)
  assert float(clamped) == 0.0
  np.testing.assert_array_equal(fedstein.james_stein(VECTOR, 10.0), np.zeros(5))


def test_james_stein_edge_cases():
  # With c = 2 the constant c - 2 is 0: nothing shrinks.
  pair = jnp.array([1.0, -2.0])
  assert float(fedstein.james_stein_factor(pair, 5.0)) == 1.0
  # A vector equal to the target stays put without NaN.
  zeros = jnp.zeros(4)
  np.testing.assert_array_equal(fedstein.james_stein(zeros, 1.0), zeros)
  assert float(fedstein.james_stein_factor(zeros, 1.0)) == 1.0


def test_coordinate_variance_closed_form():
  # Population variance 1.25 over 4 coordinates, times 4 / 5.
  value = fedstein.coordinate_variance(jnp.array([1.0, 2.0, 3.0, 4.0]))
  assert float(value) == pytest.approx(1.0, rel=1e-6)


def test_shrink_statistics_positive_part_and_floor():
  mean_stats = {
    "BatchNorm_0": {
      "mean": jnp.array([0.1, -0.1, 0.2, 0.0]),
      "var": jnp.array([0.01, 0.02, 0.01, 0.03]),
    }
  }
  spread = jax.tree.map(lambda s: jnp.full_like(s, 100.0), mean_stats)
  config = fedstein.FedSteinConfig(js_variance="across_clients")
  shrunk = fedstein.shrink_statistics(mean_stats, spread, 3.0, config)
  np.testing.assert_array_equal(shrunk["BatchNorm_0"]["mean"], np.zeros(4))
  np.testing.assert_allclose(
    shrunk["BatchNorm_0"]["var"], np.full(4, 1e-5), rtol=1e-6
  )


def test_first_round_shrinks_fedbn_average():
  # Both methods start every client from the initial statistics, so after
  # one round FedStein's statistics are the James-Stein estimate of
  # FedBN's averaged statistics.
  data = shifted_data()
  variables = _variables()
  stein_state = run(DEFAULT, data, variables, 1, DEFAULT_ROUND)
  bn_state = run(FEDBN, data, variables, 1, FEDBN_ROUND)

  average = FEDBN.global_variables(bn_state)["batch_stats"]["BatchNorm_0"]
  shrunk = stein_state.extra["BatchNorm_0"]
  mean = average["mean"]
  expected_mean = fedstein.james_stein(
    mean, jnp.var(mean) * 4 / 5, "zero", True
  )
  np.testing.assert_allclose(shrunk["mean"], expected_mean, rtol=1e-5)
  var = average["var"]
  expected_var = jnp.maximum(
    fedstein.james_stein(var, jnp.var(var) * 4 / 5, "zero", True), 1e-5
  )
  np.testing.assert_allclose(shrunk["var"], expected_var, rtol=1e-5)
  factor = fedstein.james_stein_factor(mean, jnp.var(mean) * 4 / 5)
  assert 0.0 < float(factor) < 0.99

  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
    stein_state.params,
    bn_state.params,
  )
  np.testing.assert_allclose(
    stein_state.client_states["params"]["BatchNorm_0"]["scale"],
    bn_state.client_states["params"]["BatchNorm_0"]["scale"],
    rtol=1e-5,
  )


def _identical_clients(n=30, seed=1) -> FederatedData:
  rng = np.random.default_rng(seed)
  x = (rng.normal(size=(n, NUM_FEATURES)) * 2.0 + 1.0).astype(np.float32)
  y = (x[:, 0] > 1.0).astype(np.int32)
  clients = [(x, y)] * 3
  return FederatedData.from_clients(
    clients, clients, num_classes=2, name="identical"
  )


def test_zero_variance_matches_fedbn():
  # Identical clients trained on full batches send equal statistics, so
  # the across-client variance is 0, nothing shrinks, and FedStein keeps
  # the average that FedBN's clients hold.
  data = _identical_clients()
  variables = _variables()
  algorithm = build_fedstein(js_variance="across_clients")
  stein_state = run(algorithm, data, variables, 3)
  bn_state = run(FEDBN, data, variables, 3, FEDBN_ROUND)
  stein = flat(algorithm.global_variables(stein_state))
  bn = flat(FEDBN.global_variables(bn_state))
  assert set(stein) == set(bn)
  for path, value in bn.items():
    np.testing.assert_allclose(stein[path], value, rtol=1e-4, atol=1e-6)
  # The statistics moved away from their initial zeros.
  assert np.linalg.norm(bn[("batch_stats", "BatchNorm_0", "mean")]) > 0.05


def test_frozen_global_trains_with_shared_statistics():
  # In the first round the shared statistics are the initial ones (mean 0,
  # variance 1). With one full-batch SGD step, each client's BN scale and
  # bias must be one gradient step of the loss normalized with them.
  data = shifted_data()
  model = bn_model()
  variables = _variables()
  algorithm = fedstein.fedstein(
    model,
    3,
    client=client_config(lr=LR, steps=1, batch=FULL_BATCH),
    cohort=_cohort(),
    config=fedstein.FedSteinConfig(stat_mode="frozen_global"),
  )
  state = run(algorithm, data, variables, 1)

  def loss(params, x, y):
    frozen = {"params": params, "batch_stats": variables["batch_stats"]}
    logits, _ = model.apply(frozen, x, train=False)
    return jnp.mean(losses.cross_entropy(logits, y))

  stepped = []
  for k in range(3):
    n = int(data.train.num_examples[k])
    x = jnp.asarray(data.train.x[k, :n])
    y = jnp.asarray(data.train.y[k, :n])
    grads = jax.grad(loss)(variables["params"], x, y)
    stepped.append(
      jax.tree.map(lambda p, g: p - LR * g, variables["params"], grads)
    )
    expected = stepped[k]["BatchNorm_0"]
    actual = jax.tree.map(
      lambda a, k=k: a[k], state.client_states["params"]["BatchNorm_0"]
    )
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
      actual,
      expected,
    )
  kernel = np.mean([s["Dense_0"]["kernel"] for s in stepped], axis=0)
  np.testing.assert_allclose(
    state.params["Dense_0"]["kernel"], kernel, rtol=1e-5, atol=1e-7
  )
  # The running statistics still follow the clients' batches.
  assert np.linalg.norm(state.extra["BatchNorm_0"]["mean"]) > 0


def test_client_and_global_variables():
  data = shifted_data()
  state = run(DEFAULT, data, _variables(), 2, DEFAULT_ROUND)
  rows = DEFAULT.client_variables(state)
  for k in range(3):
    jax.tree.map(
      np.testing.assert_array_equal,
      rows["batch_stats"],
      jax.tree.map(
        lambda a, k=k: jnp.broadcast_to(a, (3, *a.shape)), state.extra
      ),
    )
    np.testing.assert_array_equal(
      rows["params"]["Dense_1"]["kernel"][k], state.params["Dense_1"]["kernel"]
    )
  scales = rows["params"]["BatchNorm_0"]["scale"]
  assert not np.allclose(scales[0], scales[1])
  global_vars = DEFAULT.global_variables(state)
  np.testing.assert_allclose(
    global_vars["params"]["BatchNorm_0"]["scale"],
    np.mean(scales, axis=0),
    rtol=1e-6,
  )
  jax.tree.map(
    np.testing.assert_array_equal, global_vars["batch_stats"], state.extra
  )


def test_round_compiles_once_and_repeats_bits():
  data = shifted_data()
  first = run(DEFAULT, data, _variables(), 3, DEFAULT_ROUND, seed=5)
  second = run(DEFAULT, data, _variables(), 3, DEFAULT_ROUND, seed=5)
  assert len(TRACES) == 1
  jax.tree.map(np.testing.assert_array_equal, first, second)


@pytest.mark.parametrize(
  "field, value",
  [
    ("js_variance", "batch"),
    ("js_target", "origin"),
    ("stat_mode", "frozen"),
    ("positive_part", "yes"),
    ("variance_floor", 0.0),
  ],
)
def test_invalid_option_raises(field, value):
  with pytest.raises(ValueError, match=f"algorithm.{field}"):
    build_fedstein(**{field: value})


def test_rejects_model_without_batch_norm():
  model = bn_model()._replace(init=lambda rng, x: {"params": {}})
  algorithm = fedstein.fedstein(
    model, 3, client=client_config(), cohort=_cohort()
  )
  with pytest.raises(ValueError, match="use_batch_norm=True"):
    algorithm.init(KEY, {"params": {}})


def _heart_config(**fields):
  config = fed_heart_disease_fedstein.get_config()
  config.eval_every = 3
  config.progress_bar = False
  for name, value in fields.items():
    config[name] = value
  return config


def test_config_fields_reach_the_algorithm():
  config = _heart_config()
  config.algorithm.js_variance = "across_clients"
  config.algorithm.js_target = "mean"
  options = fedstein.config_from(config.algorithm)
  assert options == fedstein.FedSteinConfig(
    js_variance="across_clients", js_target="mean"
  )
  config.algorithm.stat_mode = "bogus"
  data = experiment.load_data(config)
  model = experiment.build_model(config, data)
  with pytest.raises(ValueError, match="stat_mode='bogus'"):
    build_algorithm(config, model, data)


def _restore(workdir, round_index):
  config = _heart_config()
  data = experiment.load_data(config)
  model = experiment.build_model(config, data)
  algorithm = build_algorithm(config, model, data)
  state_like = algorithm.init(KEY, model.init(KEY, data.train.x[0, :1]))
  checkpointer = Checkpointer(str(workdir))
  state, _ = checkpointer.restore(round_index, state_like, KEY)
  checkpointer.close()
  return state


def test_resume_equals_uninterrupted_run(tmp_path):
  straight = tmp_path / "straight"
  experiment.run_experiment(
    _heart_config(num_rounds=6, checkpoint_every=6), str(straight)
  )
  resumed = tmp_path / "resumed"
  experiment.run_experiment(
    _heart_config(num_rounds=3, checkpoint_every=3), str(resumed)
  )
  experiment.run_experiment(
    _heart_config(num_rounds=6, checkpoint_every=3), str(resumed), resume=True
  )
  a = _restore(straight, 6)
  b = _restore(resumed, 6)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert int(b.round) == 6
  assert jax.tree.leaves(b.extra)
