"""pFedHN, FedNeuro and FedVR-reconstruction: hand-computed updates and the
engine's guarantees."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from optax import tree_utils as otu

from configs import fed_heart_disease
from fedjax_med import losses
from fedjax_med.algorithms import fedavg as fedavg_lib
from fedjax_med.algorithms import fedneuro, fedvr, pfedhn
from fedjax_med.algorithms.registry import build_algorithm
from fedjax_med.models.base import from_flax
from fedjax_med.models.hypernetwork import hypernetwork
from fedjax_med.models.mlp import MLP
from fedjax_med.training import experiment
from fedjax_med.training.checkpoint import Checkpointer
from tests import toy

KEY = jax.random.PRNGKey(0)


def _client(lr=0.1, steps=1, batch=1000, loss_fn=toy.squared_error):
  return fedavg_lib.ClientConfig(
    learning_rate=lr, num_local_steps=steps, batch_size=batch, loss_fn=loss_fn
  )


def _cohort(n):
  return fedavg_lib.CohortConfig(clients_per_round=n)


def _scalar_pfedhn(num_clients, cohort, **config):
  model = toy.scalar_model()
  target = {"w": jnp.zeros(())}
  settings = pfedhn.PFedHNConfig(**{"hidden_sizes": (), **config})
  algorithm = pfedhn.pfedhn(
    model,
    num_clients,
    target_params=target,
    config=settings,
    client=_client(),
    cohort=_cohort(cohort),
    server_optimizer=optax.sgd(1.0),
  )
  return algorithm, {"params": target}


def _mlp_model():
  return from_flax(MLP(num_outputs=1, hidden_sizes=(4,)), num_outputs=1)


def _fedneuro(model, target, client, cohort, **config):
  return fedneuro.fedneuro(
    model,
    4,
    target_params=target,
    config=fedneuro.FedNeuroConfig(**config),
    client=client,
    cohort=cohort,
    server_optimizer=optax.sgd(1.0),
  )


def _fedvr(mode, beta, cohort=4):
  return fedvr.fedvr(
    toy.logistic_model(),
    4,
    target_params=toy.logistic_model().init(KEY, jnp.zeros((1, 5)))["params"],
    config=pfedhn.PFedHNConfig(hidden_sizes=(8,)),
    variance_mode=mode,
    beta=beta,
    client=_client(lr=0.1, steps=3, batch=8, loss_fn=losses.cross_entropy),
    cohort=_cohort(cohort),
    server_optimizer=optax.sgd(0.1),
  )


METHODS = ("pfedhn", "fedneuro", "fedvr_parameters", "fedvr_risk")


def _method(name):
  """A small instance of a method for 4 clients, cohorts of 2."""
  model = toy.logistic_model()
  variables = model.init(KEY, jnp.zeros((1, 5)))
  client = _client(lr=0.1, steps=3, batch=8, loss_fn=losses.cross_entropy)
  builders = {
    "pfedhn": lambda: pfedhn.pfedhn(
      model,
      4,
      target_params=variables["params"],
      config=pfedhn.PFedHNConfig(hidden_sizes=(8,)),
      client=client,
      cohort=_cohort(2),
      server_optimizer=optax.sgd(0.1),
    ),
    "fedneuro": lambda: _fedneuro(
      model, variables["params"], client, _cohort(2), hidden_sizes=(8,)
    ),
    "fedvr_parameters": lambda: _fedvr("parameters", 1.0, cohort=2),
    "fedvr_risk": lambda: _fedvr("risk", 1.0, cohort=2),
  }
  return builders[name](), variables


def _run(algorithm, data, variables, rounds, seed=0):
  state = algorithm.init(KEY, variables)
  run_round = jax.jit(algorithm.run_round)
  metrics = None
  for r in range(rounds):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), r)
    state, metrics = run_round(state, data, key)
  return state, metrics


def test_hypernetwork_starts_at_target_init():
  model = toy.logistic_model()
  variables = model.init(KEY, jnp.zeros((1, 5)))
  hyper = hypernetwork(variables["params"], 3, output_scale=0.0)
  phi = hyper.init(KEY, variables["params"])
  generated = hyper.generate(phi, jnp.ones((3,)))
  jax.tree.map(np.testing.assert_array_equal, generated, variables["params"])
  assert hyper.num_target_parameters == 6


def test_pfedhn_update_is_vjp_of_local_delta():
  # theta = v @ K + b (no hidden layer), one client, one SGD step of
  # lr 0.1 on (theta - y)^2 over its rows: theta~ - theta = -0.2 (theta - y).
  algorithm, variables = _scalar_pfedhn(
    1, 1, embedding_dim=2, output_scale=0.5, embedding_learning_rate=0.3
  )
  data = toy.quadratic_data([1], [3])
  state = algorithm.init(KEY, variables)
  kernel = np.asarray(state.params["output"]["kernel"])  # [2, 1]
  bias = np.asarray(state.params["output"]["bias"])  # [1]
  v = np.asarray(state.client_states["embedding"][0])  # [2]
  theta = float(v @ kernel[:, 0] + bias[0])
  local_delta = -0.1 * 2.0 * (theta - 1.0)

  state, _ = jax.jit(algorithm.run_round)(state, data, KEY)

  np.testing.assert_allclose(
    state.params["output"]["bias"], bias + local_delta, rtol=1e-5
  )
  np.testing.assert_allclose(
    state.params["output"]["kernel"],
    kernel + np.outer(v, [local_delta]),
    rtol=1e-5,
  )
  np.testing.assert_allclose(
    state.client_states["embedding"][0],
    v + 0.3 * kernel[:, 0] * local_delta,
    rtol=1e-5,
  )


def test_fedneuro_gradient_reaches_embedding():
  model = toy.logistic_model()
  variables = model.init(KEY, jnp.zeros((1, 5)))
  algorithm = _fedneuro(
    model, variables["params"], _client(), _cohort(4), embedding_penalty=0.0
  )
  state = algorithm.init(KEY, variables)
  data = toy.random_binary_data([20, 12, 25, 9])
  x, y = data.train.client(0)

  def loss(embedding):
    states = state.client_states["embedding"].at[0].set(embedding)
    params = algorithm.client_variables(
      state._replace(client_states={"embedding": states})
    )["params"]
    logits, _ = model.apply(jax.tree.map(lambda a: a[0], {"params": params}), x)
    return jnp.mean(losses.cross_entropy(logits, jnp.asarray(y)))

  grad = jax.grad(loss)(state.client_states["embedding"][0])
  assert float(jnp.linalg.norm(grad)) > 1e-6


def test_fedneuro_one_step_matches_fedavg():
  # With a zero output kernel the generated head equals the hypernetwork's
  # bias, which starts at the target's own head. After one local SGD step
  # the backbone delta equals FedAvg's, and the bias delta equals FedAvg's
  # head delta: the server learns the head's gradient (the privacy caveat).
  model = _mlp_model()
  variables = model.init(KEY, jnp.zeros((1, 5)))
  data = toy.random_binary_data([30])
  client = _client(lr=0.2, steps=1, batch=1000, loss_fn=losses.cross_entropy)
  algorithm = fedneuro.fedneuro(
    model,
    1,
    target_params=variables["params"],
    config=fedneuro.FedNeuroConfig(hidden_sizes=(), output_scale=0.0),
    client=client,
    cohort=_cohort(1),
    server_optimizer=optax.sgd(1.0),
  )
  reference = fedavg_lib.fedavg(model, 1, client=client, cohort=_cohort(1))
  start = algorithm.init(KEY, variables)
  state, _ = jax.jit(algorithm.run_round)(start, data, KEY)
  expected, _ = jax.jit(reference.run_round)(
    reference.init(KEY, variables), data, KEY
  )

  np.testing.assert_allclose(
    state.params["backbone"]["Dense_0"]["kernel"],
    expected.params["Dense_0"]["kernel"],
    rtol=1e-5,
    atol=1e-7,
  )
  bias_delta = otu.tree_sub(
    state.params["hypernetwork"]["output"]["bias"],
    start.params["hypernetwork"]["output"]["bias"],
  )
  head_delta = otu.tree_sub(
    expected.params["Dense_1"], variables["params"]["Dense_1"]
  )
  flat_head, _ = ravel_pytree(head_delta)
  np.testing.assert_allclose(bias_delta, flat_head, rtol=1e-5, atol=1e-7)


def test_fedneuro_embeddings_stay_out_of_aggregate():
  model = toy.logistic_model()
  variables = model.init(KEY, jnp.zeros((1, 5)))
  seen = []

  def postprocess(delta, weight, state, key, *, client_id, cohort):
    del state, key, client_id, cohort
    seen.append(jax.tree.structure(delta))
    return delta, weight, ()

  mean = fedavg_lib.aggregation.weighted_mean()
  algorithm = fedneuro.fedneuro(
    model,
    4,
    target_params=variables["params"],
    client=_client(loss_fn=losses.cross_entropy),
    cohort=_cohort(4),
    server_optimizer=optax.sgd(1.0),
    aggregator=mean._replace(postprocess=postprocess),
  )
  state = algorithm.init(KEY, variables)
  data = toy.random_binary_data([5, 6, 7, 8])
  jax.jit(algorithm.run_round)(state, data, KEY)  # Traces postprocess.
  assert seen
  assert seen[0] == jax.tree.structure(state.params)
  assert set(state.params) == {"backbone", "hypernetwork"}


def test_fedneuro_summary_descriptor_needs_summaries():
  model = toy.logistic_model()
  variables = model.init(KEY, jnp.zeros((1, 5)))
  with pytest.raises(ValueError, match="site_summaries"):
    _fedneuro(
      model,
      variables["params"],
      _client(),
      _cohort(4),
      descriptor="embedding_and_summary",
    )


def test_risk_aggregator_matches_vrex_weights():
  aggregator = fedvr.risk_variance_aggregator(beta=0.5)
  deltas = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, -1.0]])
  risk = np.array([0.2, 0.5, 1.1])
  weights = np.array([1.0, 2.0, 1.0])
  total_delta = 0.0
  totals = None
  for d, r, w in zip(deltas, risk, weights, strict=True):
    delta, weight, extra = aggregator.postprocess(
      {"delta": jnp.asarray(d), "risk": jnp.asarray(r)},
      jnp.asarray(w),
      (),
      KEY,
      client_id=0,
      cohort=None,
    )
    total_delta = total_delta + weight * delta
    totals = extra if totals is None else jax.tree.map(jnp.add, totals, extra)
  result = aggregator.finalize(
    total_delta, jnp.asarray(weights.sum()), totals, 3, (), KEY
  )
  p = weights / weights.sum()
  mean_risk = p @ risk
  expected = (p * (1 + 2 * 0.5 * (risk - mean_risk))) @ deltas
  np.testing.assert_allclose(result.mean_delta, expected, rtol=1e-6)
  np.testing.assert_allclose(
    result.metrics["risk_variance"], p @ (risk - mean_risk) ** 2, rtol=1e-5
  )


def test_fedvr_parameter_penalty_shrinks_spread():
  data = toy.random_binary_data([20, 12, 25, 9], seed=3)
  variables = toy.logistic_model().init(KEY, jnp.zeros((1, 5)))
  spreads = []
  for beta in (0.0, 5.0):
    algorithm = _fedvr("parameters", beta)
    state, _ = _run(algorithm, data, variables, 5)
    params = algorithm.client_variables(state)["params"]
    flat = jax.vmap(lambda t: ravel_pytree(t)[0])(params)
    spreads.append(float(jnp.sum(jnp.var(flat, axis=0))))
  assert spreads[1] < 0.5 * spreads[0]


def test_fedvr_anchor_is_mean_generated_model():
  data = toy.random_binary_data([20, 12, 25, 9])
  variables = toy.logistic_model().init(KEY, jnp.zeros((1, 5)))
  algorithm = _fedvr("parameters", 1.0)
  state = algorithm.init(KEY, variables)
  generated = algorithm.client_variables(state)["params"]
  mean = jax.tree.map(lambda a: jnp.mean(a, axis=0), generated)
  # The round stores the anchor it trained with in `extra`.
  state, _ = jax.jit(algorithm.run_round)(state, data, KEY)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
    state.extra,
    mean,
  )


def _heart_config(name, **overrides):
  config = fed_heart_disease.get_config()
  config.algorithm.name = name
  config.num_rounds = 2
  config.progress_bar = False
  config.algorithm.hidden_sizes = (16,)
  config.server.learning_rate = 0.05
  for dotted, value in overrides.items():
    section, _, field = dotted.rpartition(".")
    target = config
    for part in filter(None, section.split(".")):
      target = target[part]
    target[field] = value
  return config


@pytest.mark.parametrize("name", ["pfedhn", "fedneuro"])
@pytest.mark.parametrize("secure", [False, True])
def test_private_rounds_on_heart_data(name, secure):
  # Noise 0 and a small clip norm: the averaged update must be clipped.
  clip_norm = 1e-3
  config = _heart_config(
    name,
    **{
      "privacy.mode": "client",
      "privacy.secure_aggregation": secure,
      "privacy.clip_norm": clip_norm,
      "privacy.noise_multiplier": 0.0,
      "cohort.weighting": "uniform",
    },
  )
  data = experiment.load_data(config)
  model = experiment.build_model(config, data)
  algorithm = build_algorithm(config, model, data)
  variables = model.init(KEY, jnp.asarray(data.train.x[0, :1]))
  state, metrics = _run(algorithm, data, variables, 2)
  assert np.isfinite(float(metrics["train_loss"]))
  assert float(metrics["delta_norm"]) <= clip_norm * (1 + 1e-3)
  assert float(metrics["delta_norm"]) > 0


@pytest.mark.parametrize("mode", ["parameters", "risk"])
def test_fedvr_rejects_privacy(mode):
  config = _heart_config(
    "fedvr",
    **{
      "algorithm.variance_mode": mode,
      "privacy.mode": "client",
      "cohort.weighting": "uniform",
    },
  )
  data = experiment.load_data(config)
  model = experiment.build_model(config, data)
  with pytest.raises(ValueError, match="privacy.mode='none'"):
    build_algorithm(config, model, data)


@pytest.mark.parametrize("name", METHODS)
def test_embeddings_and_engine_guarantees(name):
  algorithm, variables = _method(name)
  data = toy.random_binary_data([37, 50, 64, 37])
  traces = []

  def counted(state, data, key):
    traces.append(1)
    return algorithm.run_round(state, data, key)

  run_round = jax.jit(counted)

  def run(seed, rounds):
    state = algorithm.init(KEY, variables)
    for r in range(rounds):
      key = jax.random.fold_in(jax.random.PRNGKey(seed), r)
      state, _ = run_round(state, data, key)
    return state

  # The client embedding receives gradient: after one round exactly the
  # cohort's 2 embeddings (of 4) have moved.
  initial = algorithm.init(KEY, variables).client_states["embedding"]
  one = run(7, 1)
  changed = np.any(
    np.asarray(one.client_states["embedding"]) != np.asarray(initial), axis=1
  )
  assert changed.sum() == 2

  # Same seed, same bits; another seed, other embeddings. One trace only.
  a = run(7, 3)
  b = run(7, 3)
  c = run(8, 3)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not np.array_equal(
    a.client_states["embedding"], c.client_states["embedding"]
  )
  assert len(traces) == 1


def _checkpoint_state(workdir, config, round_index):
  data = experiment.load_data(config)
  model = experiment.build_model(config, data)
  algorithm = build_algorithm(config, model, data)
  state_like = algorithm.init(KEY, model.init(KEY, data.train.x[0, :1]))
  checkpointer = Checkpointer(str(workdir))
  state, _ = checkpointer.restore(round_index, state_like, KEY)
  checkpointer.close()
  return state


def test_pfedhn_resume_equals_uninterrupted_run(tmp_path):
  def config(rounds):
    return _heart_config(
      "pfedhn",
      num_rounds=rounds,
      eval_every=3,
      checkpoint_every=3,
    )

  straight = tmp_path / "straight"
  experiment.run_experiment(config(6), str(straight))
  resumed = tmp_path / "resumed"
  experiment.run_experiment(config(3), str(resumed))
  experiment.run_experiment(config(6), str(resumed), resume=True)
  a = _checkpoint_state(straight, config(6), 6)
  b = _checkpoint_state(resumed, config(6), 6)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert int(b.round) == 6
