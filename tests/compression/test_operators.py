"""Compression operators: unbiasedness, error bounds and exact byte counts."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from fedjax_med import compression
from fedjax_med.compression import operators, rotation

KEY = jax.random.PRNGKey(0)
NUM_DRAWS = 4000


def _vector(d=40, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=d), jnp.float32)


def _draws(compressor, tree, num=NUM_DRAWS):
  """Returns `num` reconstructions of `tree`, one per key."""

  def once(key):
    payload, _ = compressor.compress(key, tree, compressor.init(tree))
    return compressor.decompress(payload)

  return jax.jit(jax.vmap(once))(jax.random.split(KEY, num))


def _assert_unbiased(samples, x):
  samples, x = np.asarray(samples, np.float64), np.asarray(x, np.float64)
  stderr = samples.std(axis=0) / math.sqrt(samples.shape[0])
  # Five standard errors per coordinate; coordinates with zero variance
  # must be exact.
  assert np.all(np.abs(samples.mean(axis=0) - x) <= 5 * stderr + 1e-6)


@pytest.mark.parametrize("num_levels", [1, 4])
def test_qsgd_unbiased(num_levels):
  x = _vector()
  _assert_unbiased(_draws(compression.qsgd(num_levels), x), x)


@pytest.mark.parametrize("num_levels", [1, 2, 8])
def test_qsgd_variance_matches_lemma(num_levels):
  x = _vector(d=64, seed=1)
  samples = np.asarray(_draws(compression.qsgd(num_levels), x), np.float64)
  x64 = np.asarray(x, np.float64)
  measured = np.mean(np.sum((samples - x64) ** 2, axis=1))
  # Exact variance: level spacing norm / s, Bernoulli rounding per entry.
  norm = np.linalg.norm(x64)
  fraction = np.abs(x64) / norm * num_levels % 1.0
  exact = (norm / num_levels) ** 2 * np.sum(fraction * (1 - fraction))
  np.testing.assert_allclose(measured, exact, rtol=0.05)
  d = x.size
  bound = min(d / num_levels**2, math.sqrt(d) / num_levels) * norm**2
  assert exact <= bound


def test_qsgd_zero_and_levels():
  compressor = compression.qsgd(4)
  payload, _ = compressor.compress(KEY, jnp.zeros(5), ())
  np.testing.assert_array_equal(compressor.decompress(payload), np.zeros(5))
  payload, _ = compressor.compress(KEY, _vector(), ())
  levels = np.asarray(payload.levels.values)
  assert levels.min() >= -4
  assert levels.max() <= 4


def test_hadamard_transform_matches_scipy():
  x = _vector(d=16)
  expected = scipy.linalg.hadamard(16) @ np.asarray(x) / 4.0
  got = rotation.hadamard_transform(x)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  back = rotation.hadamard_transform(got)
  np.testing.assert_allclose(back, x, rtol=1e-5, atol=1e-6)


def test_rotated_quantization_unbiased():
  tree = {"a": _vector(d=20), "b": _vector(d=3, seed=2).reshape(3, 1)}
  samples = _draws(compression.rotated_quantization(4), tree)
  _assert_unbiased(samples["a"], tree["a"])
  _assert_unbiased(samples["b"], tree["b"])


def test_rotated_quantization_error_bound():
  # Per draw, each rotated coordinate rounds to a neighbouring level, so
  # E||Q(x) - x||^2 <= d' * spacing^2 / 4 with d' the padded size.
  x = _vector(d=24, seed=3)
  compressor = compression.rotated_quantization(3)

  def once(key):
    payload, _ = compressor.compress(key, x, ())
    error = jnp.sum((compressor.decompress(payload) - x) ** 2)
    spacing = (payload.leaves.high - payload.leaves.low) / 2
    return error, 32 * spacing**2 / 4

  errors, bounds = jax.jit(jax.vmap(once))(jax.random.split(KEY, NUM_DRAWS))
  assert float(jnp.mean(errors)) <= float(jnp.mean(bounds))
  assert float(jnp.max(errors)) <= float(jnp.max(bounds)) * 4


def test_top_k_keeps_largest_magnitudes():
  tree = {"a": jnp.array([0.5, -3.0, 1.0]), "b": jnp.array([[2.0, -0.1]])}
  compressor = compression.top_k(k=2)
  payload, _ = compressor.compress(KEY, tree, ())
  out = compressor.decompress(payload)
  np.testing.assert_array_equal(out["a"], [0.0, -3.0, 0.0])
  np.testing.assert_array_equal(out["b"], [[2.0, 0.0]])
  assert sorted(np.asarray(payload.indices).tolist()) == [1, 3]


@pytest.mark.parametrize("k", [1, 5, 17, 40])
def test_top_k_error_bound(k):
  x = _vector(d=40, seed=k)
  compressor = compression.top_k(k=k)
  payload, _ = compressor.compress(KEY, x, ())
  error = float(jnp.sum((compressor.decompress(payload) - x) ** 2))
  assert error <= (1 - k / 40) * float(jnp.sum(x * x)) + 1e-6
  # The error is exactly the energy of the d - k smallest entries.
  tail = np.sort(np.asarray(x) ** 2)[: 40 - k].sum()
  np.testing.assert_allclose(error, tail, rtol=1e-5)


def test_low_rank_error_is_tail_singular_values():
  rng = np.random.default_rng(4)
  matrix = rng.normal(size=(6, 4)).astype(np.float32)
  kernel = rng.normal(size=(2, 3, 5)).astype(np.float32)
  tree = {"m": jnp.asarray(matrix), "k": jnp.asarray(kernel), "v": _vector(4)}
  compressor = compression.low_rank(1)
  out = compressor.decompress(compressor.compress(KEY, tree, ())[0])
  for name, value in (("m", matrix), ("k", kernel.reshape(6, 5))):
    singular = np.linalg.svd(value.astype(np.float64), compute_uv=False)
    error = np.sum((np.asarray(out[name]).reshape(value.shape) - value) ** 2)
    np.testing.assert_allclose(error, np.sum(singular[1:] ** 2), rtol=1e-4)
  np.testing.assert_array_equal(out["v"], tree["v"])


def test_low_rank_sends_small_matrices_dense():
  tree = {"m": jnp.ones((2, 3))}
  compressor = compression.low_rank(2)
  payload, _ = compressor.compress(KEY, tree, ())
  assert not operators.low_rank_applies((2, 3), 2)
  np.testing.assert_array_equal(payload["m"], tree["m"])


def test_error_feedback_loses_nothing():
  # Sum of decoded messages plus the final residual equals the sum of the
  # inputs: the residual carries every dropped coordinate forward.
  compressor = compression.error_feedback(compression.top_k(k=1))
  inputs = [_vector(d=5, seed=s) for s in range(6)]
  state = compressor.init(inputs[0])
  decoded = jnp.zeros(5)
  for t, x in enumerate(inputs):
    payload, state = compressor.compress(jax.random.fold_in(KEY, t), x, state)
    decoded = decoded + compressor.decompress(payload)
  residual, _ = state
  np.testing.assert_allclose(decoded + residual, sum(inputs), rtol=1e-5)


# Kernel [5, 3] (15 entries) and bias [3], float32: 72 bytes dense.
SHAPES = {
  "kernel": jax.ShapeDtypeStruct((5, 3), jnp.float32),
  "bias": jax.ShapeDtypeStruct((3,), jnp.float32),
}


@pytest.mark.parametrize(
  "compressor, expected",
  [
    (compression.identity(), 72),
    # 6 bits (33 values): ceil(15 * 6 / 8) + 4 and ceil(18 / 8) + 4.
    (compression.qsgd(16), 12 + 4 + 3 + 4),
    # 3 bits (5 values): ceil(45 / 8) + 4 and ceil(9 / 8) + 4.
    (compression.qsgd(2), 6 + 4 + 2 + 4),
    (compression.top_k(k=4), 4 * 4 + 4 * 4),
    # ceil(0.1 * 18) = 2 kept values and indices.
    (compression.top_k(fraction=0.1), 2 * 8),
    # Rank 1 of [5, 3]: 5 + 3 floats; the bias is sent dense.
    (compression.low_rank(1), 8 * 4 + 12),
    # 4 bits: 16 padded entries, 4 padded entries, min and max per leaf,
    # and the 8-byte key.
    (compression.rotated_quantization(16), (8 + 8) + (2 + 8) + 8),
    (compression.error_feedback(compression.top_k(k=4)), 32),
  ],
)
def test_num_bytes_exact(compressor, expected):
  assert compressor.num_bytes(SHAPES) == expected
  tree = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), SHAPES)
  payload, _ = compressor.compress(KEY, tree, compressor.init(tree))
  assert compression.payload_bytes(payload) == expected


def test_make_compressor_reads_options():
  compressor = compression.make_compressor({"name": "top_k", "k": 4})
  assert compressor.num_bytes(SHAPES) == 32
  state = compressor.init(SHAPES)  # Error feedback is on for top_k.
  assert len(state) == 2
  plain = compression.make_compressor(
    {"name": "top_k", "fraction": 0.5, "error_feedback": False}
  )
  assert plain.init(SHAPES) == ()


@pytest.mark.parametrize(
  "options, message",
  [
    ({"name": "sketch"}, "name='sketch' is unknown"),
    ({"name": "qsgd", "levels": 2}, r"unknown options \['levels'\]"),
    ({"name": "qsgd", "num_levels": 0}, "num_levels=0"),
    ({"name": "top_k", "fraction": 1.5}, "fraction=1.5"),
    ({"name": "low_rank", "rank": 0}, "rank=0"),
  ],
)
def test_make_compressor_rejects_bad_options(options, message):
  with pytest.raises(ValueError, match=message):
    compression.make_compressor(options)
