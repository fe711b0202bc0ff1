"""Tests of the sketches and the second-order methods (Newton, FedNS, FLeNS).

The Fed-Heart-Disease tests run logistic regression in float64 and compare
with the pooled optimum that scipy's L-BFGS-B finds on the pooled training
rows, independently of the library's code.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize

from configs import fed_heart_disease_compressed, fed_heart_disease_flens
from fedjax_med.algorithms import fedns, flens, newton
from fedjax_med.algorithms.fedavg import CohortConfig
from fedjax_med.compression import sketches
from fedjax_med.training import experiment
from fedjax_med.training.checkpoint import Checkpointer
from tests import toy

KEY = jax.random.PRNGKey(0)
L2 = 1e-3
ALL_CLIENTS = CohortConfig(clients_per_round=4)


@pytest.fixture
def x64():
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


# Sketches.


@pytest.mark.parametrize("kind", sketches.SKETCH_TYPES)
def test_sketch_unbiased(kind):
  n, m, draws = 12, 5, 4000
  keys = jax.random.split(KEY, draws)
  matrices = jax.vmap(lambda k: sketches.sketch_matrix(kind, k, m, n))(keys)
  mean = np.mean(np.einsum("kmi,kmj->kij", matrices, matrices), axis=0)
  # Each entry of S^T S averages m * draws terms of size 1 / m.
  np.testing.assert_allclose(mean, np.eye(n), atol=0.08)


@pytest.mark.parametrize("kind", sketches.SKETCH_TYPES)
def test_sketch_shape_and_key(kind):
  a = jax.random.normal(KEY, (11, 3))
  first = sketches.apply_sketch(kind, jax.random.PRNGKey(1), a, 4)
  again = sketches.apply_sketch(kind, jax.random.PRNGKey(1), a, 4)
  other = sketches.apply_sketch(kind, jax.random.PRNGKey(2), a, 4)
  assert first.shape == (4, 3)
  np.testing.assert_array_equal(first, again)
  assert not np.allclose(first, other)
  matrix = sketches.sketch_matrix(kind, jax.random.PRNGKey(1), 4, 11)
  np.testing.assert_allclose(first, matrix @ a, rtol=1e-5, atol=1e-6)


def test_fwht_matches_hadamard():
  x = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
  expected = scipy.linalg.hadamard(16) @ x
  np.testing.assert_allclose(
    sketches.fwht(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-5
  )


def test_srht_matches_explicit_construction():
  n, m, p = 6, 3, 8
  key = jax.random.PRNGKey(3)
  sign_key, row_key = jax.random.split(key)
  signs = np.asarray(jax.random.rademacher(sign_key, (n,), jnp.float32))
  rows = np.asarray(jax.random.choice(row_key, p, (m,), replace=False))
  # S = sqrt(p / m) R (H / sqrt(p)) D on the rows padded to p.
  hadamard = scipy.linalg.hadamard(p)[:, :n] / np.sqrt(p)
  explicit = np.sqrt(p / m) * hadamard[rows] * signs
  actual = sketches.sketch_matrix("srht", key, m, n)
  np.testing.assert_allclose(actual, explicit, rtol=1e-6, atol=1e-7)


def test_sketch_rejects_bad_settings():
  with pytest.raises(ValueError, match="sketch='count'"):
    sketches.validate_sketch("count", 4)
  with pytest.raises(ValueError, match="sketch_size=0"):
    sketches.validate_sketch("gaussian", 0)
  with pytest.raises(ValueError, match="exceeds the 8 rows"):
    sketches.apply_sketch("srht", KEY, jnp.ones((5, 2)), 9)


# Exact Newton on a quadratic.


def test_newton_solves_quadratic_in_one_round():
  # F_k(w) = mean (w - b_k)^2 with n_k rows: the optimum is the
  # example-weighted mean of the targets, sum n_k b_k / N = 47 / 13.
  data = toy.quadratic_data([1, 5, 3], [2, 6, 5])
  model = toy.scalar_model()
  algorithm = newton.newton(
    model,
    3,
    cohort=CohortConfig(clients_per_round=3),
    loss_fn=toy.squared_error,
    l2=0.0,
  )
  state = algorithm.init(KEY, model.init(KEY, jnp.zeros((1, 1))))
  state, metrics = jax.jit(algorithm.run_round)(state, data, KEY)
  np.testing.assert_allclose(state.params["w"], 47 / 13, rtol=1e-6)
  # Uplink: 3 clients x (1 gradient + 1 Hessian entry) x 4 bytes.
  assert float(metrics["uplink_bytes"]) == 24
  assert float(metrics["downlink_bytes"]) == 12


# Fed-Heart-Disease logistic regression in float64.


def _heart_data():
  config = fed_heart_disease_flens.get_config()
  return experiment.load_data(config), config


def _pooled_optimum(data):
  x, y = data.train.pooled()
  x = np.hstack([np.asarray(x, np.float64), np.ones((len(x), 1))])

  def risk(w):
    z = x @ w
    return np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * L2 * w @ w

  def gradient(w):
    z = x @ w
    return x.T @ (scipy.special.expit(z) - y) / len(y) + L2 * w

  result = scipy.optimize.minimize(
    risk,
    np.zeros(x.shape[1]),
    jac=gradient,
    method="L-BFGS-B",
    options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10000},
  )
  assert np.linalg.norm(gradient(result.x)) < 1e-7

  def risk_of(params):
    dense = params["Dense_0"]
    w = np.concatenate([np.asarray(dense["kernel"])[:, 0], dense["bias"]])
    return risk(w)

  return result.fun, risk_of


def _gaps(algorithm, data, model, rounds, seed=0):
  variables = experiment.as_float64(model.init(KEY, jnp.zeros((1, 13))))
  state = algorithm.init(KEY, variables)
  run_round = jax.jit(algorithm.run_round)
  optimum, risk_of = _pooled_optimum(data)
  gaps = []
  for r in range(rounds):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), r)
    state, _ = run_round(state, data, key)
    gaps.append(risk_of(state.params) - optimum)
  return gaps


def _rounds_to(gaps, tolerance):
  return next((r + 1 for r, gap in enumerate(gaps) if gap <= tolerance), None)


def test_newton_reaches_pooled_optimum(x64):
  data, config = _heart_data()
  model = experiment.build_model(config, data)
  algorithm = newton.newton(model, 4, cohort=ALL_CLIENTS, l2=L2)
  gaps = _gaps(algorithm, data, model, rounds=10)
  assert _rounds_to(gaps, 1e-6) <= 10
  assert abs(gaps[-1]) < 1e-10


@pytest.mark.parametrize("seed", [0, 1])
def test_flens_reaches_pooled_optimum(x64, seed):
  # 10 sketch rows per client, fewer than the 14 parameters. Both readings
  # with their defaults came within 1e-4 in 10 to 12 rounds over seeds 0
  # to 7; the "nesterov" momentum schedule took 14 to 25 over seeds 0 to 3.
  data, config = _heart_data()
  model = experiment.build_model(config, data)
  options = dict(cohort=ALL_CLIENTS, sketch_size=10, l2=L2)
  code = flens.flens(model, 4, lookahead="code", **options)
  code_gaps = _gaps(code, data, model, rounds=15, seed=seed)
  assert _rounds_to(code_gaps, 1e-4) <= 15
  paper = flens.flens(model, 4, **options)
  paper_gaps = _gaps(paper, data, model, rounds=15, seed=seed)
  assert _rounds_to(paper_gaps, 1e-4) <= 15
  nesterov = flens.flens(model, 4, beta_schedule="nesterov", **options)
  nesterov_gaps = _gaps(nesterov, data, model, rounds=30, seed=seed)
  assert _rounds_to(nesterov_gaps, 1e-4) <= 30


def test_flens_beta_schedules():
  rounds = jnp.arange(4)
  np.testing.assert_allclose(
    flens.nesterov_beta(rounds), [0.0, 0.25, 0.4, 0.5], rtol=1e-6
  )
  np.testing.assert_allclose(
    flens.constant_beta(0.3)(rounds), [0.0, 0.3, 0.3, 0.3], rtol=1e-6
  )


def test_flens_lookahead_point():
  # One round from w_1 with w_0 = w_1 - u must evaluate at w_1 + beta u.
  # A client whose risk is quadratic shows the point through its gradient.
  data = toy.quadratic_data([2], [3])
  model = toy.scalar_model()
  algorithm = flens.flens(
    model,
    1,
    cohort=CohortConfig(clients_per_round=1),
    loss_fn=toy.squared_error,
    curvature="sqrtm",
    sketch_size=1,
    beta=0.25,
    l2=0.0,
    line_search=False,
    restart=False,
  )
  variables = model.init(KEY, jnp.zeros((1, 1)))
  state = algorithm.init(KEY, variables)
  w = jnp.asarray(5.0)
  state = state._replace(
    params={"w": w},
    previous_params={"w": w - 4.0},
    momentum_rounds=jnp.asarray(3, jnp.int32),
  )
  _, metrics = algorithm.run_round(state, data, KEY)
  # F(v) = (v - 2)^2 with v = 5 + 0.25 * 4 = 6: gradient 8, risk 16.
  np.testing.assert_allclose(metrics["gradient_norm"], 8.0, rtol=1e-6)
  np.testing.assert_allclose(metrics["train_loss"], 16.0, rtol=1e-6)


def test_flens_code_reading_is_fedns(x64):
  # Without the look-ahead FLeNS is FedNS: the same keys give the same bits.
  data, config = _heart_data()
  model = experiment.build_model(config, data)
  options = dict(cohort=ALL_CLIENTS, sketch="srht", sketch_size=10, l2=L2)
  code = _gaps(
    flens.flens(model, 4, lookahead="code", **options), data, model, 3
  )
  plain = _gaps(fedns.fedns(model, 4, **options), data, model, 3)
  paper = _gaps(flens.flens(model, 4, **options), data, model, 3)
  assert code == plain
  # beta_1 = 0, so the paper reading starts like FedNS and then departs.
  assert paper[0] == plain[0]
  assert paper[2] != plain[2]


def test_round_compiles_once_and_repeats(x64):
  data, config = _heart_data()
  model = experiment.build_model(config, data)
  algorithm = flens.flens(model, 4, cohort=ALL_CLIENTS, sketch="rademacher")
  variables = experiment.as_float64(model.init(KEY, jnp.zeros((1, 13))))
  traces = []

  def counted(state, data, key):
    traces.append(1)
    return algorithm.run_round(state, data, key)

  run_round = jax.jit(counted)
  finals = []
  for _ in range(2):
    state = algorithm.init(KEY, variables)
    for r in range(3):
      state, metrics = run_round(state, data, jax.random.fold_in(KEY, r))
    finals.append(state)
  assert len(traces) == 1
  jax.tree.map(np.testing.assert_array_equal, finals[0], finals[1])
  # 4 clients x (14 + 10 * 14 + 12 line-search risks) float64 values up,
  # and the parameters plus the search direction (2 x 14) down.
  assert float(metrics["uplink_bytes"]) == 4 * (14 + 140 + 12) * 8
  assert float(metrics["downlink_bytes"]) == 4 * 28 * 8


def test_flens_rejects_bad_settings():
  model = toy.logistic_model()
  with pytest.raises(ValueError, match="lookahead='later'"):
    flens.flens(model, 4, cohort=ALL_CLIENTS, lookahead="later")
  with pytest.raises(ValueError, match="restart=True needs line_search"):
    flens.flens(model, 4, cohort=ALL_CLIENTS, line_search=False)
  with pytest.raises(ValueError, match="beta_schedule='linear'"):
    flens.flens(model, 4, cohort=ALL_CLIENTS, beta_schedule="linear")
  with pytest.raises(ValueError, match=r"beta=1.0 must be in \[0, 1\)"):
    flens.flens(model, 4, cohort=ALL_CLIENTS, beta=1.0)
  algorithm = flens.flens(
    model, 4, cohort=ALL_CLIENTS, curvature="sqrtm", sketch_size=1
  )
  variables = model.init(KEY, jnp.zeros((1, 5)))
  with pytest.raises(ValueError, match="rank at most 4, below the 6"):
    algorithm.init(KEY, variables)


def test_resume_equals_uninterrupted_run(tmp_path):
  def config(num_rounds, checkpoint_every):
    config = fed_heart_disease_flens.get_config()
    config.num_rounds = num_rounds
    config.eval_every = 3
    config.checkpoint_every = checkpoint_every
    config.progress_bar = False
    return config

  experiment.run_experiment(config(6, 6), str(tmp_path / "straight"))
  resumed = str(tmp_path / "resumed")
  experiment.run_experiment(config(3, 3), resumed)
  final = experiment.run_experiment(config(6, 3), resumed, resume=True)
  assert final["rounds"] == 6
  assert not jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    states = []
    for name in ("straight", "resumed"):
      data, _ = _heart_data()
      model = experiment.build_model(config(6, 3), data)
      algorithm = flens.flens(model, 4, cohort=ALL_CLIENTS)
      variables = experiment.as_float64(model.init(KEY, jnp.zeros((1, 13))))
      template = algorithm.init(KEY, variables)
      checkpointer = Checkpointer(str(tmp_path / name))
      state, _ = checkpointer.restore(6, template, KEY)
      checkpointer.close()
      states.append(state)
  finally:
    jax.config.update("jax_enable_x64", False)
  assert states[0].params["Dense_0"]["bias"].dtype == jnp.float64
  jax.tree.map(np.testing.assert_array_equal, states[0], states[1])


@pytest.mark.parametrize("name", ["newton", "fedns", "flens"])
def test_config_rejects_compression_and_privacy(name):
  data, config = _heart_data()
  model = experiment.build_model(config, data)
  config.algorithm.name = name
  compressed = fed_heart_disease_compressed.get_config()
  config.compression = compressed.compression
  with pytest.raises(ValueError, match="compression.uplink.name='identity'"):
    experiment.build_algorithm(config, model, data)
  config.compression.uplink.name = "identity"
  config.compression.downlink.name = "top_k"
  with pytest.raises(ValueError, match="compression.downlink names"):
    experiment.build_algorithm(config, model, data)
  config.compression.downlink.name = "identity"
  experiment.build_algorithm(config, model, data)
  config.privacy.mode = "client"
  config.cohort.weighting = "uniform"
  with pytest.raises(ValueError, match="does not support differential"):
    experiment.build_algorithm(config, model, data)
