"""Tests that the haiku models match their flax twins and the contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.models import (
  MLP,
  LogisticRegression,
  from_flax,
  haiku_logistic_regression,
  haiku_mlp,
)


def _flax_to_haiku_params(flax_params, haiku_prefix):
  """Renames flax's Dense_i/{kernel, bias} to haiku's {prefix}_i/{w, b}."""
  haiku_params = {}
  for i in range(len(flax_params)):
    dense = flax_params[f"Dense_{i}"]
    name = haiku_prefix if haiku_prefix == "linear" else f"{haiku_prefix}_{i}"
    haiku_params[name] = {"w": dense["kernel"], "b": dense["bias"]}
  return haiku_params


# (flax model, haiku model, haiku parameter name prefix)
PAIRS = {
  "logistic_regression": (
    from_flax(LogisticRegression(3), 3),
    haiku_logistic_regression(3),
    "linear",
  ),
  "mlp": (
    from_flax(MLP(3, hidden_sizes=(16, 8)), 3),
    haiku_mlp(3, hidden_sizes=(16, 8)),
    "mlp/~/linear",
  ),
  "mlp_no_hidden": (
    from_flax(MLP(1, hidden_sizes=()), 1),
    haiku_mlp(1, hidden_sizes=()),
    "mlp/~/linear",
  ),
}


def _paired_variables(name, x):
  flax_model, haiku_model, prefix = PAIRS[name]
  flax_variables = flax_model.init(jax.random.key(0), x)
  haiku_variables = haiku_model.init(jax.random.key(1), x)
  copied = _flax_to_haiku_params(flax_variables["params"], prefix)

  # The copy must fill every haiku parameter with the same shape.
  assert jax.tree.map(jnp.shape, copied) == jax.tree.map(
    jnp.shape, haiku_variables["params"]
  )
  return flax_variables, {"params": copied}


@pytest.mark.parametrize("name", sorted(PAIRS))
@pytest.mark.parametrize("feature_shape", [(10,), (2, 5)])
def test_haiku_logits_match_flax(name, feature_shape):
  flax_model, haiku_model, _ = PAIRS[name]
  x = jax.random.normal(jax.random.key(2), (6, *feature_shape))
  flax_variables, haiku_variables = _paired_variables(name, x)

  flax_logits, _ = flax_model.apply(flax_variables, x)
  haiku_logits, _ = haiku_model.apply(haiku_variables, x)

  np.testing.assert_allclose(haiku_logits, flax_logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_haiku_gradients_match_flax(name):
  flax_model, haiku_model, prefix = PAIRS[name]
  x = jax.random.normal(jax.random.key(3), (6, 10))
  flax_variables, haiku_variables = _paired_variables(name, x)

  def loss(model, params):
    logits, _ = model.apply({"params": params}, x, train=True)
    return jnp.sum(jnp.tanh(logits) ** 2)

  flax_grads = jax.grad(lambda p: loss(flax_model, p))(flax_variables["params"])
  haiku_grads = jax.grad(lambda p: loss(haiku_model, p))(
    haiku_variables["params"]
  )

  expected = _flax_to_haiku_params(flax_grads, prefix)
  assert jax.tree.structure(haiku_grads) == jax.tree.structure(expected)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    haiku_grads,
    expected,
  )
  assert any(np.any(g != 0) for g in jax.tree.leaves(haiku_grads))


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_haiku_contract(name):
  _, haiku_model, _ = PAIRS[name]
  x = jnp.ones((4, 10))
  variables = haiku_model.init(jax.random.key(0), x)

  logits, train_state = haiku_model.apply(
    variables, x, train=True, rng=jax.random.key(1)
  )
  _, eval_state = haiku_model.apply(variables, x, train=False)

  assert list(variables) == ["params"]
  assert logits.shape == (4, haiku_model.num_outputs)
  assert train_state == {}
  assert eval_state == {}


def test_haiku_mlp_has_relu_between_layers():
  # With one hidden unit, weights 1 and -1 and bias 0, the hidden layer is
  # relu(x) for a scalar feature, so the logit is -relu(x) + 0.5.
  model = haiku_mlp(1, hidden_sizes=(1,))
  x = jnp.array([[-2.0], [3.0]])
  params = {
    "mlp/~/linear_0": {"w": jnp.ones((1, 1)), "b": jnp.zeros(1)},
    "mlp/~/linear_1": {"w": -jnp.ones((1, 1)), "b": jnp.full(1, 0.5)},
  }

  logits, _ = model.apply({"params": params}, x)

  np.testing.assert_allclose(logits, [[0.5], [-2.5]])
