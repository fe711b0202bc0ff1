"""q-FedAvg, AFL and Ditto against hand-computed rounds on the toy quadratic.

Client k of `toy.quadratic_data` has loss `F_k(w) = (w - b_k)^2`, so one
full-batch local SGD step from `w` with learning rate `lr` lands on
`w - 2 lr (w - b_k)`, and every server step can be written out in numpy.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import fed_heart_disease
from fedjax_med import losses
from fedjax_med.algorithms import afl as afl_lib
from fedjax_med.algorithms import ditto as ditto_lib
from fedjax_med.algorithms import fedavg as fedavg_lib
from fedjax_med.algorithms import qfedavg as qfedavg_lib
from fedjax_med.algorithms.registry import build_algorithm
from fedjax_med.training import experiment
from tests import toy

KEY = jax.random.PRNGKey(0)


def _run(algorithm, data, variables, rounds, seed=0):
  state = algorithm.init(KEY, variables)
  run_round = jax.jit(algorithm.run_round)
  for r in range(rounds):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), r)
    state, _ = run_round(state, data, key)
  return state


def _scalar_variables():
  return {"params": {"w": jnp.zeros(())}}


def _client(lr=0.1, steps=1, batch=1000, loss_fn=toy.squared_error):
  return fedavg_lib.ClientConfig(
    learning_rate=lr, num_local_steps=steps, batch_size=batch, loss_fn=loss_fn
  )


def _cohort(n, **kw):
  return fedavg_lib.CohortConfig(clients_per_round=n, **kw)


def _logistic_setup(sizes=(30, 12, 25, 8)):
  data = toy.random_binary_data(list(sizes))
  model = toy.logistic_model()
  variables = model.init(KEY, jnp.zeros((1, 5)))
  client = _client(lr=0.2, steps=4, batch=8, loss_fn=losses.cross_entropy)
  return data, model, variables, client


# q-FedAvg.


def _qfedavg_by_hand(targets, sizes, q, lr, rounds, weighting):
  b = np.asarray(targets, np.float64)
  p = np.asarray(sizes, np.float64) if weighting == "example" else np.ones(3)
  w = 0.0
  lipschitz = 1.0 / lr
  for _ in range(rounds):
    loss = (w - b) ** 2 + qfedavg_lib.LOSS_EPSILON
    local = w - 2 * lr * (w - b)
    dw = lipschitz * (w - local)
    delta = loss**q * dw
    h = q * loss ** (q - 1) * dw**2 + lipschitz * loss**q
    w = w - np.sum(p * delta) / np.sum(p * h)
  return w


@pytest.mark.parametrize("q", [0.5, 2.0])
@pytest.mark.parametrize("weighting", ["uniform", "example"])
def test_qfedavg_server_step_matches_formula(q, weighting):
  targets, sizes = [0, 2, 5], [2, 3, 5]
  data = toy.quadratic_data(targets, sizes)
  algorithm = qfedavg_lib.qfedavg(
    toy.scalar_model(),
    3,
    q=q,
    client=_client(lr=0.1),
    cohort=_cohort(3, weighting=weighting),
  )
  state = _run(algorithm, data, _scalar_variables(), rounds=3)
  expected = _qfedavg_by_hand(targets, sizes, q, 0.1, 3, weighting)
  np.testing.assert_allclose(state.params["w"], expected, rtol=1e-5)


@pytest.mark.parametrize("weighting", ["uniform", "example"])
def test_qfedavg_q_zero_equals_fedavg(weighting):
  data, model, variables, client = _logistic_setup()
  cohort = _cohort(4, weighting=weighting)
  qfair = qfedavg_lib.qfedavg(model, 4, q=0.0, client=client, cohort=cohort)
  plain = fedavg_lib.fedavg(model, 4, client=client, cohort=cohort)
  a = _run(qfair, data, variables, rounds=3)
  b = _run(plain, data, variables, rounds=3)
  # Equal up to rounding: q = 0 scales each delta by L / L.
  jax.tree.map(
    lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
    a.params,
    b.params,
  )


def test_qfedavg_moves_toward_worst_client():
  # At w = 0 the local models are 0.2 (loss 1) and 0.8 (loss 16). FedAvg
  # lands on their mean; q = 1 weighs client 1's delta by its loss. (A
  # large q also shrinks the step, since h_k grows like F_k^q.)
  data = toy.quadratic_data([1, 4], [3, 3])
  steps = {}
  for q in (0.0, 1.0):
    algorithm = qfedavg_lib.qfedavg(
      toy.scalar_model(), 2, q=q, client=_client(), cohort=_cohort(2)
    )
    steps[q] = float(_run(algorithm, data, _scalar_variables(), 1).params["w"])
  assert steps[0.0] == pytest.approx(0.5, rel=1e-5)
  # sum F_k dw_k / sum h_k = (1 * 2 + 16 * 8) / ((4 + 10 * 1) + (64 + 10 * 16)).
  assert steps[1.0] == pytest.approx(130 / 238, rel=1e-5)
  assert steps[1.0] > steps[0.0]


# AFL.


def _project_by_hand(v):
  # Bisection on the threshold t with sum(max(v - t, 0)) = 1.
  low, high = np.min(v) - 1.0, np.max(v)
  for _ in range(200):
    mid = 0.5 * (low + high)
    if np.sum(np.maximum(v - mid, 0.0)) > 1.0:
      low = mid
    else:
      high = mid
  return np.maximum(v - 0.5 * (low + high), 0.0)


def test_project_to_simplex_matches_bisection():
  rng = np.random.default_rng(0)
  for scale in (0.1, 1.0, 10.0):
    for _ in range(20):
      v = rng.normal(size=7) * scale
      got = np.asarray(afl_lib.project_to_simplex(jnp.asarray(v, jnp.float32)))
      np.testing.assert_allclose(got, _project_by_hand(v), atol=1e-5)
      assert got.min() >= 0.0
      assert got.sum() == pytest.approx(1.0, abs=1e-5)


def _afl_by_hand(targets, lr, lambda_lr, rounds):
  b = np.asarray(targets, np.float64)
  mixture = np.full(len(b), 1.0 / len(b))
  w = 0.0
  history = []
  for _ in range(rounds):
    loss = (w - b) ** 2
    local = w - 2 * lr * (w - b)
    w = w + np.sum(mixture * (local - w)) / np.sum(mixture)
    mixture = _project_by_hand(mixture + lambda_lr * loss)
    history.append(mixture)
  return w, history


def test_afl_matches_hand_computed_rounds():
  targets = [0, 1, 4]
  data = toy.quadratic_data(targets, [2, 5, 3])
  algorithm = afl_lib.afl(
    toy.scalar_model(),
    3,
    lambda_learning_rate=0.01,
    client=_client(lr=0.1),
    cohort=_cohort(3),
  )
  state = _run(algorithm, data, _scalar_variables(), rounds=4)
  w, history = _afl_by_hand(targets, 0.1, 0.01, rounds=4)
  np.testing.assert_allclose(state.params["w"], w, rtol=1e-5)
  mixture = np.asarray(afl_lib.mixture_weights(state))
  np.testing.assert_allclose(mixture, history[-1], atol=1e-6)


def test_afl_lambda_stays_in_simplex_and_favours_worst():
  # Client 2 (target 4) has the highest loss throughout.
  data = toy.quadratic_data([0, 1, 4], [2, 5, 3])
  algorithm = afl_lib.afl(
    toy.scalar_model(),
    3,
    lambda_learning_rate=0.05,
    client=_client(lr=0.05),
    cohort=_cohort(3),
  )
  state = algorithm.init(KEY, _scalar_variables())
  run_round = jax.jit(algorithm.run_round)
  previous = 1.0 / 3
  for r in range(6):
    state, metrics = run_round(state, data, jax.random.fold_in(KEY, r))
    mixture = np.asarray(afl_lib.mixture_weights(state))
    assert mixture.min() >= 0.0
    assert mixture.sum() == pytest.approx(1.0, abs=1e-5)
    assert mixture[2] >= previous
    assert float(metrics["lambda_max"]) == pytest.approx(mixture.max())
    previous = mixture[2]
  assert np.argmax(mixture) == 2
  assert mixture[2] > 0.5


def test_afl_scales_sampled_losses_by_inclusion():
  # Both clients have loss 9 at w = 0; one of two is sampled, so its loss
  # counts twice: lambda = proj(1/2 + 0.01 * 2 * 9, 1/2) = (0.59, 0.41).
  data = toy.quadratic_data([3, 3], [2, 2])
  algorithm = afl_lib.afl(
    toy.scalar_model(),
    2,
    lambda_learning_rate=0.01,
    client=_client(),
    cohort=_cohort(1),
  )
  state = _run(algorithm, data, _scalar_variables(), rounds=1)
  mixture = np.sort(np.asarray(afl_lib.mixture_weights(state)))
  np.testing.assert_allclose(mixture, [0.41, 0.59], atol=1e-6)


def test_afl_zero_lambda_rate_equals_uniform_fedavg():
  data, model, variables, client = _logistic_setup()
  fixed = afl_lib.afl(
    model, 4, lambda_learning_rate=0.0, client=client, cohort=_cohort(4)
  )
  plain = fedavg_lib.fedavg(
    model, 4, client=client, cohort=_cohort(4, weighting="uniform")
  )
  a = _run(fixed, data, variables, rounds=3)
  b = _run(plain, data, variables, rounds=3)
  jax.tree.map(
    lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
    a.params,
    b.params,
  )


# Ditto.


def _ditto_by_hand(targets, lr, steps, ditto_lambda, rounds):
  b = np.asarray(targets, np.float64)
  w, v = 0.0, np.zeros(len(b))
  for _ in range(rounds):
    for _ in range(steps):
      v = v - lr * (2 * (v - b) + ditto_lambda * (v - w))
    local = w - 2 * lr * (w - b)
    w = np.mean(local)  # Equal client sizes.
  return w, v


def test_ditto_personal_model_is_proximal_sgd():
  targets = [1, 3]
  data = toy.quadratic_data(targets, [2, 2])
  algorithm = ditto_lib.ditto(
    toy.scalar_model(),
    2,
    ditto_lambda=0.5,
    personal_steps=3,
    client=_client(lr=0.1),
    cohort=_cohort(2),
  )
  state = _run(algorithm, data, _scalar_variables(), rounds=2)
  w, v = _ditto_by_hand(targets, 0.1, 3, 0.5, rounds=2)
  np.testing.assert_allclose(state.params["w"], w, rtol=1e-5)
  personal = algorithm.client_variables(state)["params"]["w"]
  np.testing.assert_allclose(personal, v, rtol=1e-5)


def test_ditto_large_lambda_pins_personal_to_global():
  # Many personal steps reach the proximal fixed point
  # v = (2 b + lambda w0) / (2 + lambda) with w0 = 0 in round 1.
  data = toy.quadratic_data([3], [4])
  distances = []
  for ditto_lambda in (0.0, 10.0, 1000.0):
    algorithm = ditto_lib.ditto(
      toy.scalar_model(),
      1,
      ditto_lambda=ditto_lambda,
      personal_steps=60,
      personal_learning_rate=0.5 / (2 + ditto_lambda),
      client=_client(),
      cohort=_cohort(1),
    )
    state = _run(algorithm, data, _scalar_variables(), rounds=1)
    personal = float(algorithm.client_variables(state)["params"]["w"][0])
    assert personal == pytest.approx(6 / (2 + ditto_lambda), rel=1e-4)
    distances.append(abs(personal))
  assert distances == sorted(distances, reverse=True)
  assert distances[-1] < 0.01


def test_ditto_global_model_is_fedavg_bitwise():
  data, model, variables, client = _logistic_setup()
  cohort = _cohort(3)
  personal = ditto_lib.ditto(
    model, 4, ditto_lambda=0.1, personal_steps=2, client=client, cohort=cohort
  )
  plain = fedavg_lib.fedavg(model, 4, client=client, cohort=cohort)
  a = _run(personal, data, variables, rounds=3)
  b = _run(plain, data, variables, rounds=3)
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)


def test_ditto_updates_only_sampled_clients():
  data, model, variables, client = _logistic_setup()
  algorithm = ditto_lib.ditto(
    model,
    4,
    ditto_lambda=0.1,
    personal_steps=2,
    client=client,
    cohort=_cohort(2),
  )
  state = _run(algorithm, data, variables, rounds=1)
  kernels = np.asarray(
    algorithm.client_variables(state)["params"]["Dense_0"]["kernel"]
  )
  initial = np.asarray(variables["params"]["Dense_0"]["kernel"])
  unchanged = [np.array_equal(k, initial) for k in kernels]
  assert sum(unchanged) == 2


# Engine guarantees and configuration.


def _builders():
  return {
    "qfedavg": lambda model, client, cohort: qfedavg_lib.qfedavg(
      model, 4, q=1.0, client=client, cohort=cohort
    ),
    "afl": lambda model, client, cohort: afl_lib.afl(
      model, 4, lambda_learning_rate=0.1, client=client, cohort=cohort
    ),
    "ditto": lambda model, client, cohort: ditto_lib.ditto(
      model, 4, ditto_lambda=0.1, personal_steps=2, client=client, cohort=cohort
    ),
  }


@pytest.mark.parametrize("name", ["qfedavg", "afl", "ditto"])
def test_round_compiles_once(name):
  data = toy.random_binary_data([37, 50, 64, 37])
  model = toy.logistic_model()
  variables = model.init(KEY, jnp.zeros((1, 5)))
  algorithm = _builders()[name](
    model,
    _client(lr=0.1, steps=3, batch=16, loss_fn=losses.cross_entropy),
    _cohort(2, clients_per_chunk=1),
  )
  traces = []

  def counted(state, data, key):
    traces.append(1)
    return algorithm.run_round(state, data, key)

  run_round = jax.jit(counted)
  state = algorithm.init(KEY, variables)
  for r in range(4):
    state, _ = run_round(state, data, jax.random.fold_in(KEY, r))
  assert len(traces) == 1


@pytest.mark.parametrize("name", ["qfedavg", "afl", "ditto"])
def test_same_seed_gives_identical_bits(name):
  data, model, variables, client = _logistic_setup()
  algorithm = _builders()[name](model, client, _cohort(3))
  # The second run reuses the compiled round, as a rerun in one process would.
  runs = [_run(algorithm, data, variables, rounds=2, seed=5) for _ in range(2)]
  jax.tree.map(np.testing.assert_array_equal, runs[0], runs[1])


def _heart_config(name, **privacy):
  config = fed_heart_disease.get_config()
  config.algorithm.name = name
  config.cohort.weighting = "uniform"
  for field, value in privacy.items():
    config.privacy[field] = value
  return config


@pytest.mark.parametrize("name", ["qfedavg", "afl"])
@pytest.mark.parametrize(
  "privacy, message",
  [
    ({"mode": "client"}, "privacy.mode='client'"),
    ({"mode": "example"}, "privacy.mode='example'"),
    ({"secure_aggregation": True}, "secure_aggregation=True"),
  ],
)
def test_loss_weighted_methods_reject_privacy(name, privacy, message):
  config = _heart_config(name, **privacy)
  data = experiment.load_data(config)
  model = experiment.build_model(config, data)
  with pytest.raises(ValueError, match=message):
    build_algorithm(config, model, data)


def test_ditto_builds_with_client_dp():
  config = _heart_config("ditto", mode="client")
  data = experiment.load_data(config)
  model = experiment.build_model(config, data)
  algorithm = build_algorithm(config, model, data)
  assert algorithm.client_variables is not None


@pytest.mark.parametrize(
  "build, message",
  [
    (
      lambda m, c, k: qfedavg_lib.qfedavg(m, 2, q=-1.0, client=c, cohort=k),
      "q=-1.0",
    ),
    (
      lambda m, c, k: afl_lib.afl(
        m, 2, lambda_learning_rate=-0.1, client=c, cohort=k
      ),
      "lambda_learning_rate=-0.1",
    ),
    (
      lambda m, c, k: ditto_lib.ditto(
        m, 2, ditto_lambda=-1.0, personal_steps=1, client=c, cohort=k
      ),
      "ditto_lambda=-1.0",
    ),
    (
      lambda m, c, k: ditto_lib.ditto(
        m, 2, ditto_lambda=0.1, personal_steps=0, client=c, cohort=k
      ),
      "personal_steps=0",
    ),
  ],
)
def test_bad_options_raise(build, message):
  with pytest.raises(ValueError, match=message):
    build(toy.scalar_model(), _client(), _cohort(2))
