"""Tests for the zoo models: output shapes, contract, jit, vmap, BatchNorm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.models import MLP, from_flax, get_model

# (name, library, feature_shape, options)
MODEL_CASES = [
  ("logistic_regression", "flax", (13,), {}),
  ("logistic_regression", "flax", (4, 4, 1), {}),
  ("mlp", "flax", (13,), {}),
  ("mlp", "flax", (6, 2), {"use_batch_norm": True}),
  ("cnn", "flax", (8, 8, 1), {}),
  ("cnn", "flax", (8, 8, 1), {"conv_impl": "lax"}),
  ("logistic_regression", "haiku", (13,), {}),
  ("mlp", "haiku", (3, 5), {"hidden_sizes": (7,)}),
]
CASE_IDS = [
  f"{name}-{library}-{'x'.join(map(str, shape))}-{'-'.join(options)}"
  for name, library, shape, options in MODEL_CASES
]


def _build(case, num_classes=3):
  name, library, feature_shape, options = case
  return get_model(
    name,
    num_classes=num_classes,
    feature_shape=feature_shape,
    library=library,
    **options,
  )


def _batch(feature_shape, batch_size=5, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch_size, *feature_shape))


@pytest.mark.parametrize("case", MODEL_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("num_classes,num_outputs", [(2, 1), (5, 5)])
def test_logits_shape(case, num_classes, num_outputs):
  model = _build(case, num_classes)
  x = _batch(case[2])
  variables = model.init(jax.random.key(0), x)

  train_logits, _ = model.apply(variables, x, train=True)
  eval_logits, _ = model.apply(variables, x, train=False)

  assert model.num_outputs == num_outputs
  assert train_logits.shape == (5, num_outputs)
  assert eval_logits.shape == (5, num_outputs)
  assert np.all(np.isfinite(train_logits))


@pytest.mark.parametrize("case", MODEL_CASES, ids=CASE_IDS)
def test_init_and_apply_contract(case):
  model = _build(case)
  x = _batch(case[2])
  variables = model.init(jax.random.key(0), x)

  _, eval_state = model.apply(variables, x, train=False)
  _, train_state = model.apply(variables, x, train=True)

  assert "params" in variables
  state_names = sorted(k for k in variables if k != "params")
  assert sorted(eval_state) == state_names
  assert sorted(train_state) == state_names
  if case[3].get("use_batch_norm"):
    assert state_names == ["batch_stats"]
  else:
    assert state_names == []


@pytest.mark.parametrize("case", MODEL_CASES, ids=CASE_IDS)
def test_jit_matches_eager(case):
  model = _build(case)
  x = _batch(case[2])
  variables = model.init(jax.random.key(0), x)

  eager, eager_state = model.apply(variables, x, train=True)
  jitted, jitted_state = jax.jit(model.apply, static_argnames="train")(
    variables, x, train=True
  )

  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    jitted_state,
    eager_state,
  )


@pytest.mark.parametrize("case", MODEL_CASES, ids=CASE_IDS)
def test_vmap_over_clients_matches_loop(case):
  num_clients = 3
  model = _build(case)
  keys = jax.random.split(jax.random.key(1), num_clients)
  xs = jnp.stack([_batch(case[2], seed=i) for i in range(num_clients)])
  variables = jax.vmap(model.init)(keys, xs)

  def apply_train(variables, x):
    return model.apply(variables, x, train=True)

  vmapped, vmapped_state = jax.jit(jax.vmap(apply_train))(variables, xs)

  for i in range(num_clients):
    client_variables = jax.tree.map(lambda a, i=i: a[i], variables)
    logits, state = apply_train(client_variables, xs[i])
    np.testing.assert_allclose(vmapped[i], logits, rtol=1e-5, atol=1e-5)
    jax.tree.map(
      lambda a, b, i=i: np.testing.assert_allclose(
        a[i], b, rtol=1e-5, atol=1e-5
      ),
      vmapped_state,
      state,
    )


@pytest.mark.parametrize(
  "feature_shape,head_features",
  [((8, 8, 1), 2 * 2 * 32), ((3, 3, 2), 1 * 1 * 32), ((7, 5, 3), 1 * 1 * 32)],
)
def test_cnn_pools_while_spatial_size_allows(feature_shape, head_features):
  model = get_model("cnn", num_classes=4, feature_shape=feature_shape)
  x = jnp.ones((2, *feature_shape))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)

  params = variables["params"]
  assert params["Conv2D_0"]["kernel"].shape == (3, 3, feature_shape[2], 16)
  assert params["Conv2D_1"]["kernel"].shape == (3, 3, 16, 32)
  assert params["Dense_0"]["kernel"].shape == (head_features, 4)


def test_cnn_conv_impls_give_same_logits():
  patches = get_model("cnn", num_classes=10, feature_shape=(8, 8, 1))
  plain = get_model(
    "cnn", num_classes=10, feature_shape=(8, 8, 1), conv_impl="lax"
  )
  x = _batch((8, 8, 1))
  variables = patches.init(jax.random.key(0), x)

  np.testing.assert_allclose(
    patches.apply(variables, x)[0],
    plain.apply(variables, x)[0],
    rtol=1e-5,
    atol=1e-5,
  )


def test_cnn_rejects_flat_input():
  model = get_model("cnn", num_classes=2, feature_shape=(8, 8, 1))
  variables = model.init(jax.random.key(0), _batch((8, 8, 1)))
  with pytest.raises(ValueError, match="as_images=True"):
    model.apply(variables, _batch((64,)))


def _batch_norm_mlp():
  module = MLP(num_outputs=3, hidden_sizes=(8,), use_batch_norm=True)
  return from_flax(module, num_outputs=3)


def test_batch_norm_train_updates_running_stats():
  model = _batch_norm_mlp()
  x = _batch((6,), batch_size=16) * 2.0 + 1.0
  variables = model.init(jax.random.key(0), x)

  _, state = model.apply(variables, x, train=True)

  # Running statistics start at mean 0 and variance 1, and flax.linen's
  # BatchNorm (momentum 0.99) moves them 1% towards the batch's statistics
  # of the first Dense layer's output.
  dense = variables["params"]["Dense_0"]
  hidden = x @ dense["kernel"] + dense["bias"]
  stats = state["batch_stats"]["BatchNorm_0"]
  old_stats = variables["batch_stats"]["BatchNorm_0"]
  np.testing.assert_allclose(old_stats["mean"], np.zeros(8))
  np.testing.assert_allclose(
    stats["mean"], 0.01 * hidden.mean(axis=0), rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(
    stats["var"], 0.99 + 0.01 * hidden.var(axis=0), rtol=1e-4, atol=1e-6
  )
  assert not np.allclose(stats["mean"], old_stats["mean"])


def test_batch_norm_eval_keeps_running_stats():
  model = _batch_norm_mlp()
  x = _batch((6,), batch_size=16) * 2.0 + 1.0
  variables = model.init(jax.random.key(0), x)
  _, trained_state = model.apply(variables, x, train=True)
  variables = {**variables, **trained_state}

  _, state = model.apply(variables, x, train=False)

  jax.tree.map(np.testing.assert_array_equal, state, trained_state)


def test_batch_norm_train_and_eval_normalize_differently():
  model = _batch_norm_mlp()
  x = _batch((6,), batch_size=16) * 2.0 + 1.0
  variables = model.init(jax.random.key(0), x)

  train_logits, _ = model.apply(variables, x, train=True)
  eval_logits, _ = model.apply(variables, x, train=False)

  # Batch statistics normalize each hidden unit to mean 0 over the batch.
  # Fresh running statistics (mean 0, variance 1) leave it unchanged.
  assert not np.allclose(train_logits, eval_logits, atol=1e-3)
