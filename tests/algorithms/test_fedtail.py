"""FEDTAIL against FedAvg, a SAM closed form and a direct gradient."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fedjax_med import losses
from fedjax_med.algorithms import fedavg as fedavg_lib
from fedjax_med.algorithms import fedtail
from fedjax_med.algorithms.registry import build_algorithm, fedtail_config
from fedjax_med.core.client import ClientBatch
from tests import toy

KEY = jax.random.PRNGKey(0)


def _run(algorithm, data, variables, rounds):
  state = algorithm.init(KEY, variables)
  run_round = jax.jit(algorithm.run_round)
  for r in range(rounds):
    state, metrics = run_round(state, data, jax.random.fold_in(KEY, r))
  return state, metrics


def _client(lr=0.1, steps=2, batch=16, loss_fn=losses.cross_entropy):
  return fedavg_lib.ClientConfig(
    learning_rate=lr, num_local_steps=steps, batch_size=batch, loss_fn=loss_fn
  )


def _cohort(n, **kw):
  return fedavg_lib.CohortConfig(clients_per_round=n, **kw)


def test_fedtail_without_sam_or_matching_is_fedavg():
  # Batches hold every row of a client, so both algorithms see the same
  # data at every step.
  data = toy.random_binary_data([12, 9, 15, 12])
  model = toy.logistic_model()
  variables = model.init(KEY, jnp.zeros((1, 5)))
  counts = losses.global_class_counts(data.train, 2)
  plain = fedavg_lib.fedavg(model, 4, client=_client(), cohort=_cohort(4))
  tail = fedtail.fedtail(
    model,
    4,
    class_counts=counts,
    client=_client(),
    cohort=_cohort(4),
    config=fedtail.FedTailConfig(rho=0.0, matching_weight=0.0),
  )
  plain_state, _ = _run(plain, data, variables, 3)
  tail_state, _ = _run(tail, data, variables, 3)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    tail_state.params,
    plain_state.params,
  )


def test_sam_step_matches_quadratic_closed_form():
  # One client whose 5 rows have target 3: the loss is (w - 3)^2, its
  # gradient 2 (w - 3), and SAM steps with the gradient at w + rho sign.
  data = toy.quadratic_data([3], [5])
  lr, rho, steps = 0.1, 0.5, 3
  algorithm = fedtail.fedtail(
    toy.scalar_model(),
    1,
    class_counts=losses.global_class_counts(data.train, data.num_classes),
    client=_client(lr=lr, steps=steps, loss_fn=toy.squared_error),
    cohort=_cohort(1),
    config=fedtail.FedTailConfig(rho=rho, matching_weight=0.0),
  )
  state, _ = _run(algorithm, data, {"params": {"w": jnp.zeros(())}}, 1)

  w = 0.0
  for _ in range(steps):
    perturbed = w + rho * np.sign(w - 3.0)
    w -= lr * 2.0 * (perturbed - 3.0)
  np.testing.assert_allclose(float(state.params["w"]), w, rtol=1e-6)
  plain_gradient_steps = 3.0 * (1.0 - (1.0 - 2.0 * lr) ** steps)
  assert abs(w - plain_gradient_steps) > 0.1


def _direct_matched_gradient(model, params, x, y, tail_mask, weight):
  tail = jnp.asarray(tail_mask)[y]

  def mean_loss(params, rows):
    logits, _ = model.apply({"params": params}, x)
    return losses.masked_mean(losses.cross_entropy(logits, y), rows)

  def objective(params):
    everything = jnp.ones_like(tail)
    head_gradient = jax.grad(mean_loss)(params, ~tail)
    tail_gradient = jax.grad(mean_loss)(params, tail)
    cosine = fedtail.gradient_cosine(head_gradient, tail_gradient)
    return mean_loss(params, everything) + weight * (1.0 - cosine)

  return jax.jit(jax.grad(objective))(params)


def _example_loss(model):
  def example_loss(params, x, y, rng):
    logits, _ = model.apply({"params": params}, x[None], rng=rng)
    return losses.cross_entropy(logits, y[None])[0]

  return example_loss


def test_matching_gradient_matches_direct_computation():
  data = toy.random_binary_data([20])
  model = toy.logistic_model()
  params = model.init(KEY, jnp.zeros((1, 5)))["params"]
  tail_mask = np.asarray([False, True])
  batch_gradient = fedtail.make_batch_gradient(
    fedtail.FedTailConfig(rho=0.0, matching_weight=0.7), 32, tail_mask
  )
  batch = ClientBatch(
    jnp.asarray(data.train.x[0]),
    jnp.asarray(data.train.y[0]),
    jnp.asarray(data.train.num_examples[0]),
  )
  gradient, _ = jax.jit(batch_gradient, static_argnums=0)(
    _example_loss(model), params, batch, KEY
  )

  x, y = data.train.client(0)
  expected = _direct_matched_gradient(
    model, params, jnp.asarray(x), jnp.asarray(y), tail_mask, 0.7
  )
  unmatched = _direct_matched_gradient(
    model, params, jnp.asarray(x), jnp.asarray(y), tail_mask, 0.0
  )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
    gradient,
    expected,
  )
  gap = jax.tree.map(
    lambda a, b: float(jnp.max(jnp.abs(a - b))), gradient, unmatched
  )
  assert max(jax.tree.leaves(gap)) > 1e-3


def test_matching_is_off_without_tail_rows():
  data = toy.random_binary_data([20])
  model = toy.logistic_model()
  params = model.init(KEY, jnp.zeros((1, 5)))["params"]
  batch = ClientBatch(
    jnp.asarray(data.train.x[0]),
    jnp.zeros_like(jnp.asarray(data.train.y[0])),  # Every row is class 0.
    jnp.asarray(data.train.num_examples[0]),
  )
  tail_mask = np.asarray([False, True])

  def gradient_with(weight):
    batch_gradient = fedtail.make_batch_gradient(
      fedtail.FedTailConfig(rho=0.0, matching_weight=weight), 32, tail_mask
    )
    return jax.jit(batch_gradient, static_argnums=0)(
      _example_loss(model), params, batch, KEY
    )

  matched, loss_a = gradient_with(5.0)
  plain, loss_b = gradient_with(0.0)
  jax.tree.map(np.testing.assert_allclose, matched, plain)
  np.testing.assert_allclose(loss_a, loss_b)


@pytest.mark.parametrize(
  "a,b,expected",
  [
    ([1.0, 2.0], [2.0, 4.0], 1.0),
    ([1.0, 0.0], [-3.0, 0.0], -1.0),
    ([1.0, 0.0], [0.0, 2.0], 0.0),
    ([0.0, 0.0], [1.0, 1.0], 0.0),
  ],
)
def test_gradient_cosine_values(a, b, expected):
  tree_a = {"u": jnp.asarray(a[:1]), "v": jnp.asarray(a[1])}
  tree_b = {"u": jnp.asarray(b[:1]), "v": jnp.asarray(b[1])}
  np.testing.assert_allclose(
    fedtail.gradient_cosine(tree_a, tree_b), expected, atol=1e-6
  )


def test_fedtail_round_compiles_once():
  data = toy.random_binary_data([37, 50, 64, 37])
  model = toy.logistic_model()
  variables = model.init(KEY, jnp.zeros((1, 5)))
  algorithm = fedtail.fedtail(
    model,
    4,
    class_counts=losses.global_class_counts(data.train, 2),
    client=_client(steps=3, batch=8),
    cohort=_cohort(2, clients_per_chunk=1),
    config=fedtail.FedTailConfig(rho=0.05, matching_weight=0.5),
  )
  traces = []

  def counted(state, data, key):
    traces.append(1)
    return algorithm.run_round(state, data, key)

  run_round = jax.jit(counted)
  state = algorithm.init(KEY, variables)
  for r in range(4):
    state, metrics = run_round(state, data, jax.random.fold_in(KEY, r))
  assert len(traces) == 1
  assert np.isfinite(float(metrics["train_loss"]))


def _config(**algorithm):
  config = ml_collections.ConfigDict()
  config.num_rounds = 2
  config.seed = 0
  config.algorithm = ml_collections.ConfigDict(
    dict(name="fedtail", **algorithm)
  )
  config.client = ml_collections.ConfigDict(
    dict(learning_rate=0.1, num_local_steps=2, batch_size=8, optimizer="sgd")
  )
  config.server = ml_collections.ConfigDict(dict(learning_rate=1.0))
  config.cohort = ml_collections.ConfigDict(
    dict(clients_per_round=2, sampling="uniform", weighting="example")
  )
  return config


def test_registry_builds_fedtail_from_config():
  data = toy.random_binary_data([10, 12])
  model = toy.logistic_model()
  algorithm = build_algorithm(
    _config(rho=0.1, matching_weight=0.2), model, data
  )
  state, _ = _run(algorithm, data, model.init(KEY, jnp.zeros((1, 5))), 1)
  assert int(state.round) == 1


def test_registry_reads_fedtail_fields():
  parsed = fedtail_config(_config(rho=0.2, tail_fraction=0.3))
  assert parsed == fedtail.FedTailConfig(
    rho=0.2, matching_weight=0.1, tail_fraction=0.3
  )


def test_fedtail_rejects_dp_sgd():
  config = _config()
  config.privacy = ml_collections.ConfigDict(dict(mode="example"))
  with pytest.raises(ValueError, match="DP-SGD"):
    build_algorithm(
      config, toy.logistic_model(), toy.random_binary_data([9, 9])
    )


def test_fedtail_rejects_negative_rho():
  with pytest.raises(ValueError, match="rho=-0.1"):
    fedtail.validate_config(fedtail.FedTailConfig(rho=-0.1))
