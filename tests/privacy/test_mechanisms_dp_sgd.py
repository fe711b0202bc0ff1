"""DP-SGD inside a client: sampling, per-example clipping, noise scale."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax import tree_utils as otu

from fedjax_med import losses
from fedjax_med.algorithms import fedavg as fedavg_lib
from fedjax_med.core.client import ClientBatch, local_train
from fedjax_med.models.base import from_flax
from fedjax_med.privacy import dp_sgd
from tests import toy

KEY = jax.random.PRNGKey(0)


def _client_batch(num_examples, max_examples, num_features=5, seed=0):
  rng = np.random.default_rng(seed)
  x = np.zeros((max_examples, num_features), np.float32)
  y = np.zeros((max_examples,), np.int32)
  x[:num_examples] = rng.normal(size=(num_examples, num_features)) * 3
  y[:num_examples] = rng.integers(0, 2, num_examples)
  return ClientBatch(jnp.asarray(x), jnp.asarray(y), jnp.asarray(num_examples))


def _logistic_variables():
  return toy.logistic_model().init(KEY, jnp.zeros((1, 5)))


def _example_loss(params, x, y, rng):
  del rng
  logits, _ = toy.logistic_model().apply({"params": params}, x[None])
  return losses.cross_entropy(logits, y[None])[0]


def test_zero_noise_full_batch_equals_plain_sgd():
  # Full-batch fixed-size sampling, a clip norm no gradient reaches and no
  # noise: DP-SGD is plain SGD on the same rows.
  batch = _client_batch(24, 24)
  model = toy.logistic_model()
  variables = _logistic_variables()
  config = dp_sgd.DPSGDConfig(1e6, 0.0, "fixed_size")
  common = dict(optimizer=optax.sgd(0.3), num_steps=5, batch_size=24)
  plain = jax.jit(lambda v: local_train(model, v, batch, KEY, **common))(
    variables
  )
  gradient_fn = dp_sgd.make_batch_gradient(config, 24)
  private = jax.jit(
    lambda v: local_train(
      model, v, batch, KEY, batch_gradient=gradient_fn, **common
    )
  )(variables)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    plain.params,
    private.params,
  )
  np.testing.assert_allclose(plain.mean_loss, private.mean_loss, rtol=1e-5)


def test_clipped_sum_matches_reference_and_bound():
  batch = _client_batch(10, 12, seed=3)
  params = _logistic_variables()["params"]
  mask = jnp.arange(12) < 10
  rngs = jax.random.split(KEY, 12)
  clip_norm = 0.5
  summed, _, norms = dp_sgd.clipped_gradient_sum(
    _example_loss, params, batch.x, batch.y, mask, rngs, clip_norm
  )

  # Reference: one jax.grad per real example, clipped in numpy.
  expected = jax.tree.map(np.zeros_like, params)
  example_grad = jax.jit(jax.grad(_example_loss))
  for i in range(10):
    grad = example_grad(params, batch.x[i], batch.y[i], rngs[i])
    leaves = [np.asarray(g) for g in jax.tree.leaves(grad)]
    norm = np.sqrt(sum(np.sum(g**2) for g in leaves))
    np.testing.assert_allclose(norms[i], norm, rtol=1e-5)
    factor = min(1.0, clip_norm / norm)
    expected = jax.tree.map(lambda e, g, f=factor: e + f * g, expected, grad)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    summed,
    expected,
  )
  assert float(np.max(norms[:10])) > clip_norm  # Clipping was active.


def test_each_example_clipped_to_bound():
  # One real example at a time: the sum is that example's clipped gradient.
  batch = _client_batch(16, 16, seed=4)
  params = _logistic_variables()["params"]
  rngs = jax.random.split(KEY, 16)

  @jax.jit
  def single(i):
    mask = jnp.arange(16) == i
    summed, _, norm = dp_sgd.clipped_gradient_sum(
      _example_loss, params, batch.x, batch.y, mask, rngs, 0.1
    )
    return otu.tree_norm(summed), norm[i]

  clipped, before = jax.vmap(single)(jnp.arange(16))
  assert float(jnp.max(clipped)) <= 0.1 * (1 + 1e-6)
  np.testing.assert_allclose(clipped, jnp.minimum(before, 0.1), rtol=1e-5)


def _zero_gradient_loss(params, x, y, rng):
  del x, y, rng
  return 0.0 * jnp.sum(params["w"])


def test_noise_scale_on_sum_and_average():
  # All per-example gradients are zero, so the gradient is pure noise:
  # std z * C = 1.1 on the sum, and 1.1 / 64 = 0.0171875 on the average.
  batch = ClientBatch(
    jnp.zeros((64, 1)), jnp.zeros((64,), jnp.int32), jnp.asarray(64)
  )
  params = {"w": jnp.zeros((1000,))}
  gradient_fn = dp_sgd.make_batch_gradient(
    dp_sgd.DPSGDConfig(1.0, 1.1, "fixed_size"), 64
  )

  def one(key):
    return gradient_fn(_zero_gradient_loss, params, batch, key)[0]["w"]

  draws = jax.lax.map(one, jax.random.split(KEY, 4096), batch_size=128)
  average_std = float(np.std(draws))
  np.testing.assert_allclose(average_std * 64, 1.1, rtol=0.03)
  np.testing.assert_allclose(average_std, 0.0171875, rtol=0.03)
  assert abs(average_std - 0.1375) > 0.1  # The sqrt(B) reading.


def test_empty_poisson_batch_is_noise_only_step():
  batch = ClientBatch(jnp.zeros((8, 1)), jnp.zeros((8,), jnp.int32), 0)
  batch = batch._replace(num_examples=jnp.asarray(0))
  params = {"w": jnp.zeros((2000,))}
  gradient_fn = dp_sgd.make_batch_gradient(dp_sgd.DPSGDConfig(2.0, 0.5), 4)
  gradient, loss = jax.jit(
    lambda key: gradient_fn(_zero_gradient_loss, params, batch, key)
  )(KEY)
  assert float(loss) == 0.0
  assert np.all(np.isfinite(gradient["w"]))
  # No rows: the denominator falls back to batch_size = 4.
  np.testing.assert_allclose(np.std(gradient["w"]), 0.5 * 2.0 / 4, rtol=0.05)


def test_steps_draw_fresh_noise():
  batch = _client_batch(6, 6)
  gradient_fn = dp_sgd.make_batch_gradient(dp_sgd.DPSGDConfig(1.0, 1.0), 3)
  params = {"w": jnp.zeros((50,))}
  draw = jax.jit(
    lambda key: gradient_fn(_zero_gradient_loss, params, batch, key)[0]["w"]
  )
  first = draw(KEY)
  second = draw(jax.random.fold_in(KEY, 1))
  assert not np.any(np.isin(np.asarray(first), np.asarray(second)))


def test_poisson_inclusion_rates():
  # n = 20 real rows of 32 padded, batch_size 6: q = 0.3.
  keys = jax.random.split(KEY, 100_000)
  _, masks = jax.vmap(
    lambda k: dp_sgd.poisson_batch(k, jnp.asarray(20), 32, 6)
  )(keys)
  masks = np.asarray(masks, np.float64)
  assert masks[:, 20:].sum() == 0  # Padding rows are never drawn.
  np.testing.assert_allclose(masks[:, :20].mean(axis=0), 0.3, atol=0.006)
  pairwise = np.mean(masks[:, 0] * masks[:, 1])
  np.testing.assert_allclose(pairwise, 0.09, atol=0.004)
  sizes = masks.sum(axis=1)
  np.testing.assert_allclose(sizes.mean(), 6.0, atol=0.03)
  np.testing.assert_allclose(sizes.std(), np.sqrt(20 * 0.3 * 0.7), rtol=0.02)


def test_truncated_poisson_respects_capacity():
  keys = jax.random.split(KEY, 20_000)
  indices, masks = jax.vmap(
    lambda k: dp_sgd.poisson_batch(k, jnp.asarray(40), 48, 10, capacity=12)
  )(keys)
  masks = np.asarray(masks)
  indices = np.asarray(indices)
  assert masks.shape == (20_000, 12)
  assert np.all(indices[masks] < 40)
  # Each row's inclusion is q = 0.25, reduced only when the draw overflows,
  # and the kept subset does not favour low row indices.
  counts = np.zeros(48)
  np.add.at(counts, indices[masks], 1)
  rates = counts[:40] / 20_000
  assert rates.max() - rates.min() < 0.03
  assert 0.2 < rates.mean() <= 0.25


def test_fixed_size_batches_are_distinct_real_rows():
  keys = jax.random.split(KEY, 50_000)
  indices, masks = jax.vmap(
    lambda k: dp_sgd.fixed_size_batch(k, jnp.asarray(20), 32, 6)
  )(keys)
  indices = np.asarray(indices)
  assert np.all(np.asarray(masks))
  assert np.all(indices < 20)
  assert all(len(set(row)) == 6 for row in indices[:1000])
  both = np.mean(np.any(indices == 0, axis=1) & np.any(indices == 1, axis=1))
  np.testing.assert_allclose(both, 6 * 5 / (20 * 19), atol=0.004)


def test_expected_batch_size_and_rates():
  sizes = jnp.asarray([199, 30, 4, 0])
  np.testing.assert_array_equal(
    dp_sgd.expected_batch_size(sizes, 16), [16.0, 16.0, 4.0, 16.0]
  )
  np.testing.assert_allclose(
    dp_sgd.sampling_rates([199, 30, 4, 0], 16), [16 / 199, 16 / 30, 1.0, 0.0]
  )


class _BatchNormModel(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(1)(nn.BatchNorm(use_running_average=not train)(x))


def test_batch_norm_model_rejected():
  model = from_flax(_BatchNormModel(), 1)
  variables = model.init(KEY, jnp.zeros((1, 5)))
  gradient_fn = dp_sgd.make_batch_gradient(dp_sgd.DPSGDConfig(), 4)
  with pytest.raises(
    ValueError, match=r"non-trainable state \['batch_stats'\]"
  ):
    local_train(
      model,
      variables,
      _client_batch(8, 8),
      KEY,
      optimizer=optax.sgd(0.1),
      num_steps=1,
      batch_size=4,
      batch_gradient=gradient_fn,
    )


def test_regularizer_gradient_added_unclipped():
  # No data gradient and no noise: one step moves w by -lr * mu * (w - a),
  # far beyond the clip norm 1e-3.
  batch = ClientBatch(jnp.zeros((4, 1)), jnp.zeros((4,), jnp.int32), 4)
  batch = batch._replace(num_examples=jnp.asarray(4))
  model = toy.scalar_model()
  gradient_fn = dp_sgd.make_batch_gradient(dp_sgd.DPSGDConfig(1e-3, 0.0), 2)
  anchor = 10.0

  def regularizer(params):
    return 0.5 * 2.0 * (params["w"] - anchor) ** 2

  result = local_train(
    model,
    {"params": {"w": jnp.zeros(())}},
    batch,
    KEY,
    optimizer=optax.sgd(0.1),
    num_steps=1,
    batch_size=2,
    regularizer=regularizer,
    loss_fn=lambda logits, labels: 0.0 * logits[:, 0],
    batch_gradient=gradient_fn,
  )
  np.testing.assert_allclose(result.params["w"], 0.1 * 2.0 * anchor, rtol=1e-6)


@pytest.mark.parametrize(
  "config, message",
  [
    (dp_sgd.DPSGDConfig(batch_sampling="shuffle"), "batch_sampling='shuffle'"),
    (dp_sgd.DPSGDConfig(poisson_capacity=2), "poisson_capacity=2"),
    (dp_sgd.DPSGDConfig(clip_norm=-1.0), "clip_norm=-1.0"),
    (dp_sgd.DPSGDConfig(noise_multiplier=-1.0), "noise_multiplier=-1.0"),
  ],
)
def test_bad_dp_sgd_settings_raise(config, message):
  with pytest.raises(ValueError, match=message):
    dp_sgd.make_batch_gradient(config, 8)


def test_dp_sgd_round_compiles_once_and_repeats_bits():
  data = toy.random_binary_data([30, 12, 25, 8])
  model = toy.logistic_model()
  variables = model.init(KEY, jnp.zeros((1, 5)))
  algorithm = fedavg_lib.fedavg(
    model,
    4,
    client=fedavg_lib.ClientConfig(
      learning_rate=0.1,
      num_local_steps=3,
      batch_size=6,
      loss_fn=losses.cross_entropy,
      dp_sgd=dp_sgd.DPSGDConfig(1.0, 1.0, "poisson"),
    ),
    cohort=fedavg_lib.CohortConfig(clients_per_round=2, clients_per_chunk=1),
  )
  traces = []

  def counted(state, data, key):
    traces.append(1)
    return algorithm.run_round(state, data, key)

  def run(seed):
    run_round = jax.jit(counted)
    state = algorithm.init(KEY, variables)
    for r in range(3):
      state, _ = run_round(state, data, jax.random.fold_in(KEY, seed * 7 + r))
    return state

  first = run(0)
  assert len(traces) == 1
  second = run(0)
  jax.tree.map(np.testing.assert_array_equal, first, second)
  other = run(1)
  assert not np.array_equal(
    first.params["Dense_0"]["kernel"], other.params["Dense_0"]["kernel"]
  )
