"""MOON and UniVarFL on the FedAvg round."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import fed_heart_disease_moon
from fedjax_med import losses
from fedjax_med.algorithms import fedavg as fedavg_lib
from fedjax_med.algorithms import moon, univarfl
from fedjax_med.algorithms.registry import build_algorithm
from fedjax_med.losses import representation
from fedjax_med.models.registry import get_model
from fedjax_med.training import experiment
from fedjax_med.training.checkpoint import Checkpointer
from fedjax_med.training.writers import read_jsonl
from tests import toy

KEY = jax.random.PRNGKey(0)
SIZES = [30, 12, 25, 9]


def _mlp():
  return get_model("mlp", num_classes=2, feature_shape=(5,), hidden_sizes=(8,))


def _setup():
  data = toy.random_binary_data(SIZES)
  model = _mlp()
  return data, model, model.init(KEY, jnp.zeros((1, 5)))


def _common(clients_per_round=3, lr=0.2):
  return dict(
    client=fedavg_lib.ClientConfig(
      learning_rate=lr,
      num_local_steps=4,
      batch_size=8,
      loss_fn=losses.cross_entropy,
    ),
    cohort=fedavg_lib.CohortConfig(clients_per_round=clients_per_round),
  )


def _run(algorithm, data, variables, rounds, seed=0, run_round=None):
  state = algorithm.init(KEY, variables)
  run_round = run_round or jax.jit(algorithm.run_round)
  for r in range(rounds):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), r)
    state, _ = run_round(state, data, key)
  return state


def _max_difference(a, b):
  return max(
    float(jnp.max(jnp.abs(x - y)))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


@functools.cache
def _fedavg_params(rounds):
  data, model, variables = _setup()
  run_round = _fedavg_round()
  algorithm = fedavg_lib.fedavg(model, 4, **_common())
  return _run(algorithm, data, variables, rounds, run_round=run_round).params


@functools.cache
def _fedavg_round():
  return jax.jit(fedavg_lib.fedavg(_mlp(), 4, **_common()).run_round)


def test_moon_mu_zero_equals_fedavg_bitwise():
  data, model, variables = _setup()
  avg_params = _fedavg_params(3)
  moon0 = _run(
    moon.moon(model, 4, config=moon.MoonConfig(mu=0.0), **_common()),
    data,
    variables,
    3,
  )
  jax.tree.map(np.testing.assert_array_equal, avg_params, moon0.params)


def test_moon_first_round_is_fedavg_then_differs():
  # The previous models start as the global model, so in round 1 the
  # negative equals the positive and l_con = log 2 has zero gradient.
  data, model, variables = _setup()
  build = moon.moon(model, 4, config=moon.MoonConfig(mu=5.0), **_common())
  moon_round = jax.jit(build.run_round)
  one_moon = _run(build, data, variables, 1, run_round=moon_round)
  assert _max_difference(_fedavg_params(1), one_moon.params) < 1e-6
  three_moon = _run(build, data, variables, 3, run_round=moon_round)
  assert _max_difference(_fedavg_params(3), three_moon.params) > 1e-4


def test_moon_client_state_holds_last_local_params():
  # One client per round with server learning rate 1: the new global model
  # is the sampled client's local model. Other clients keep their rows.
  data, model, variables = _setup()
  algorithm = moon.moon(
    model, 4, config=moon.MoonConfig(mu=1.0), **_common(clients_per_round=1)
  )
  state = algorithm.init(KEY, variables)
  initial = variables["params"]
  run_round = jax.jit(algorithm.run_round)
  expected_rows = {k: initial for k in range(4)}
  sampled_clients = set()
  for r in range(4):
    state, _ = run_round(state, data, jax.random.fold_in(KEY, r))
    rows = moon.previous_local_params(state)
    changed = [
      k
      for k in range(4)
      if _max_difference(
        jax.tree.map(lambda leaf, k=k: leaf[k], rows), expected_rows[k]
      )
      > 0
    ]
    assert len(changed) == 1
    sampled = changed[0]
    sampled_clients.add(sampled)
    local = jax.tree.map(lambda leaf, k=sampled: leaf[k], rows)
    assert _max_difference(local, state.params) < 1e-6
    expected_rows[sampled] = local
  assert len(sampled_clients) > 1


def test_univarfl_zero_weights_equals_fedavg_bitwise():
  data, model, variables = _setup()
  avg_params = _fedavg_params(3)
  config = univarfl.UniVarFLConfig(variance_weight=0.0, uniformity_weight=0.0)
  zero = _run(
    univarfl.univarfl(model, 4, config=config, **_common()),
    data,
    variables,
    3,
  )
  jax.tree.map(np.testing.assert_array_equal, avg_params, zero.params)
  default = _run(univarfl.univarfl(model, 4, **_common()), data, variables, 3)
  assert _max_difference(avg_params, default.params) > 1e-4


@pytest.mark.parametrize("target", univarfl.VARIANCE_TARGETS)
def test_univarfl_objective_adds_weighted_terms(target):
  data, model, variables = _setup()
  config = univarfl.UniVarFLConfig(variance_target=target)
  objective = univarfl.make_objective(model, config, losses.cross_entropy)
  x = jnp.asarray(data.train.x[0, :6])
  y = jnp.asarray(data.train.y[0, :6])
  mask = jnp.array([True] * 5 + [False])
  total, (data_loss, _) = objective(variables["params"], {}, x, y, mask, KEY)

  logits, features, _ = model.apply_features(variables, x)
  expected_data = losses.masked_mean(losses.cross_entropy(logits, y), mask)
  if target == "probabilities":
    variance = representation.variance_hinge(losses.probabilities(logits), mask)
  else:
    variance = representation.std_hinge(features, mask, 1.0)
  spread = representation.uniformity(features, mask)
  assert float(data_loss) == pytest.approx(float(expected_data), rel=1e-6)
  assert float(total) == pytest.approx(
    float(expected_data + 2.5 * variance + 0.5 * spread), rel=1e-6
  )
  assert float(variance) > 0


def _builds():
  return {
    "moon": lambda model, **kw: moon.moon(model, 4, **kw),
    "univarfl": lambda model, **kw: univarfl.univarfl(model, 4, **kw),
  }


@pytest.mark.parametrize("name", ["moon", "univarfl"])
def test_round_compiles_once(name):
  data, model, variables = _setup()
  schedule = optax.exponential_decay(0.1, transition_steps=1, decay_rate=0.9)
  common = _common()
  common["client"] = common["client"]._replace(learning_rate=schedule)
  common["cohort"] = common["cohort"]._replace(clients_per_chunk=1)
  algorithm = _builds()[name](model, **common)
  traces = []

  def counted(state, data, key):
    traces.append(1)
    return algorithm.run_round(state, data, key)

  run_round = jax.jit(counted)
  state = algorithm.init(KEY, variables)
  for r in range(4):
    state, _ = run_round(state, data, jax.random.fold_in(KEY, r))
  assert len(traces) == 1


@pytest.mark.parametrize("name", ["moon", "univarfl"])
def test_same_seed_gives_identical_bits(name):
  data, model, variables = _setup()
  algorithm = _builds()[name](model, **_common())
  run_round = jax.jit(algorithm.run_round)
  first = _run(algorithm, data, variables, 3, run_round=run_round)
  second = _run(algorithm, data, variables, 3, run_round=run_round)
  jax.tree.map(np.testing.assert_array_equal, first, second)
  other = _run(algorithm, data, variables, 3, seed=1, run_round=run_round)
  assert _max_difference(first.params, other.params) > 0


@pytest.mark.parametrize(
  "build, kwargs, message",
  [
    (moon.moon, {"config": moon.MoonConfig(mu=-1.0)}, "mu=-1.0"),
    (moon.moon, {"config": moon.MoonConfig(temperature=0.0)}, "temperature"),
    (
      univarfl.univarfl,
      {"config": univarfl.UniVarFLConfig(variance_weight=-0.5)},
      "variance_weight",
    ),
    (
      univarfl.univarfl,
      {"config": univarfl.UniVarFLConfig(uniformity_weight=-0.5)},
      "uniformity_weight",
    ),
    (
      univarfl.univarfl,
      {"config": univarfl.UniVarFLConfig(variance_target="logits")},
      "variance_target='logits'",
    ),
    (
      univarfl.univarfl,
      {"config": univarfl.UniVarFLConfig(feature_std_target=0.0)},
      "feature_std_target",
    ),
  ],
)
def test_bad_settings_raise(build, kwargs, message):
  with pytest.raises(ValueError, match=message):
    build(_mlp(), 4, **_common(), **kwargs)


@pytest.mark.parametrize("build", [moon.moon, univarfl.univarfl])
def test_model_without_features_raises(build):
  with pytest.raises(ValueError, match="apply_features"):
    build(toy.logistic_model(), 4, **_common())


def _moon_config(**overrides):
  config = fed_heart_disease_moon.get_config()
  config.eval_every = 3
  config.progress_bar = False
  for field, value in overrides.items():
    config[field] = value
  return config


def _checkpoint_state(workdir, round_index):
  config = _moon_config()
  data = experiment.load_data(config)
  model = experiment.build_model(config, data)
  algorithm = build_algorithm(config, model, data)
  key = jax.random.PRNGKey(0)
  state_like = algorithm.init(key, model.init(key, data.train.x[0, :1]))
  checkpointer = Checkpointer(str(workdir))
  state, _ = checkpointer.restore(round_index, state_like, key)
  checkpointer.close()
  return state


def test_moon_resume_equals_uninterrupted_run(tmp_path):
  straight = tmp_path / "straight"
  experiment.run_experiment(
    _moon_config(num_rounds=6, checkpoint_every=6), str(straight)
  )
  resumed = tmp_path / "resumed"
  experiment.run_experiment(
    _moon_config(num_rounds=3, checkpoint_every=3), str(resumed)
  )
  experiment.run_experiment(
    _moon_config(num_rounds=6, checkpoint_every=3), str(resumed), resume=True
  )
  a = _checkpoint_state(straight, 6)
  b = _checkpoint_state(resumed, 6)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert int(b.round) == 6
  # Every hospital trains each round, so each keeps its own local model.
  kernels = np.asarray(moon.previous_local_params(b)["Dense_0"]["kernel"])
  assert np.max(np.abs(kernels[0] - kernels[1])) > 0
  records = read_jsonl(str(resumed / "metrics.jsonl"))
  assert [r["round"] for r in records] == [1, 2, 3, 4, 5, 6]


def test_moon_reads_contrastive_weight(monkeypatch):
  # MOON's mu has its own field, because algorithm.mu is FedProx's weight.
  captured = {}
  real_moon = moon.moon

  def spy(*args, config, **kwargs):
    captured["config"] = config
    return real_moon(*args, config=config, **kwargs)

  monkeypatch.setattr(moon, "moon", spy)
  config = _moon_config()
  config.algorithm.contrastive_weight = 2.5
  config.algorithm.mu = 0.1
  data = experiment.load_data(config)
  build_algorithm(config, experiment.build_model(config, data), data)
  assert captured["config"].mu == 2.5
