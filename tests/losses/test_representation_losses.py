"""FedUV's variance and uniformity terms and MOON's loss by hand."""

import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.losses import representation

ROOT_HALF = 1.0 / math.sqrt(2.0)


def _finite(tree):
  return all(
    bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree)
  )


def _binary(p):
  p = jnp.asarray(p, jnp.float32)
  return jnp.stack([1.0 - p, p], axis=-1)


# ---- variance hinge ---------------------------------------------------------


def test_variance_hinge_binary_hand_value():
  # Real rows p = 0.9, 0.1, 0.5: mean 0.5, squared deviations 0.16 + 0.16 +
  # 0 = 0.32, unbiased variance 0.16, std 0.4 in both columns. gamma =
  # 1 / sqrt(2), so the hinge is 1 / sqrt(2) - 0.4. Row 4 is padding.
  mask = jnp.array([True, True, True, False])
  value = representation.variance_hinge(
    _binary([0.9, 0.1, 0.5, 0.3]), mask, epsilon=0.0
  )
  assert float(value) == pytest.approx(ROOT_HALF - 0.4, rel=1e-6)


def test_variance_hinge_default_epsilon_value():
  mask = jnp.array([True, True, True])
  value = representation.variance_hinge(_binary([0.9, 0.1, 0.5]), mask)
  assert float(value) == pytest.approx(
    ROOT_HALF - math.sqrt(0.16 + 1e-4), rel=1e-6
  )


def test_variance_hinge_three_classes_hand_value():
  # Columns (0.7, 0.1, 0.2), (0.2, 0.8, 0.1), (0.1, 0.1, 0.7), whose
  # unbiased variances are 0.1033, 0.1433 and 0.12; gamma = 1 / sqrt(3).
  probabilities = jnp.array(
    [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.1, 0.7]], jnp.float32
  )
  mask = jnp.ones(3, bool)
  variances = [
    statistics.variance([0.7, 0.1, 0.2]),
    statistics.variance([0.2, 0.8, 0.1]),
    statistics.variance([0.1, 0.1, 0.7]),
  ]
  assert variances == pytest.approx([0.31 / 3, 0.43 / 3, 0.12])
  gamma = 1 / math.sqrt(3)
  expected = np.mean([max(0.0, gamma - math.sqrt(v)) for v in variances])
  value = representation.variance_hinge(probabilities, mask, epsilon=0.0)
  assert float(value) == pytest.approx(expected, rel=1e-5)


def test_std_hinge_inactive_above_target():
  # Column 0 has std 2 > target 1 and adds nothing; column 1 has std 0.
  values = jnp.array([[0.0, 5.0], [2.0, 5.0], [4.0, 5.0]])
  value = representation.std_hinge(values, jnp.ones(3, bool), 1.0, epsilon=0.0)
  assert float(value) == pytest.approx(0.5)


def test_variance_hinge_ignores_masked_rows():
  mask = jnp.array([True, True, True, False])
  a = representation.variance_hinge(_binary([0.9, 0.1, 0.5, 0.3]), mask)
  b = representation.variance_hinge(_binary([0.9, 0.1, 0.5, 0.99]), mask)
  assert float(a) == float(b)
  gradient = jax.grad(
    lambda p: representation.variance_hinge(_binary(p), mask)
  )(jnp.array([0.9, 0.1, 0.5, 0.3]))
  assert float(gradient[3]) == 0.0


@pytest.mark.parametrize("real_rows", [0, 1])
def test_variance_hinge_few_rows_is_zero(real_rows):
  mask = jnp.arange(4) < real_rows
  p = jnp.array([0.9, 0.1, 0.5, 0.3])
  for epsilon in (0.0, 1e-4):

    def hinge(p, epsilon=epsilon):
      return representation.variance_hinge(_binary(p), mask, epsilon=epsilon)

    assert float(hinge(p)) == 0.0
    assert _finite(jax.grad(hinge)(p))


def test_variance_hinge_finite_gradient_when_collapsed():
  # Equal rows: std 0 in every column, where sqrt has no finite slope.
  p = jnp.full((4,), 0.5)
  gradient = jax.grad(
    lambda p: representation.variance_hinge(_binary(p), jnp.ones(4, bool))
  )(p)
  assert _finite(gradient)


def test_variance_hinge_rejects_one_column():
  with pytest.raises(ValueError, match="two columns"):
    representation.variance_hinge(jnp.ones((3, 1)), jnp.ones(3, bool))


# ---- uniformity -------------------------------------------------------------


def test_uniformity_odd_pairs_hand_value():
  # Squared distances 1, 4, 5: median 4. Row 4 is padding far away.
  z = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [50.0, 50.0]])
  mask = jnp.array([True, True, True, False])
  expected = (math.exp(-1 / 4) + math.exp(-4 / 4) + math.exp(-5 / 4)) / 3
  value = representation.uniformity(z, mask)
  assert float(value) == pytest.approx(expected, rel=1e-6)


def test_uniformity_even_pairs_uses_lower_median():
  # Squared distances 1, 9, 49, 4, 36, 16; sorted 1, 4, 9, 16, 36, 49. The
  # lower median is 9 (torch.median); the midpoint 12.5 would fail.
  z = jnp.array([[0.0], [1.0], [3.0], [7.0]])
  distances = [1, 9, 49, 4, 36, 16]
  expected = np.mean([math.exp(-d / 9) for d in distances])
  value = representation.uniformity(z, jnp.ones(4, bool))
  assert float(value) == pytest.approx(expected, rel=1e-6)


def test_uniformity_zero_distance_in_mean_not_median():
  # Squared distances 0, 1, 1: median of the nonzero ones is 1, and the
  # identical pair still counts as exp(0) = 1 in the mean.
  z = jnp.array([[0.0], [0.0], [1.0]])
  expected = (1.0 + 2 * math.exp(-1.0)) / 3
  value = representation.uniformity(z, jnp.ones(3, bool))
  assert float(value) == pytest.approx(expected, rel=1e-6)


def test_uniformity_ignores_masked_rows():
  mask = jnp.array([True, True, False, True])
  z = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.3, 0.3], [0.0, 2.0]])
  moved = z.at[2].set(jnp.array([9.0, -4.0]))
  a = representation.uniformity(z, mask)
  b = representation.uniformity(moved, mask)
  assert float(a) == float(b)
  gradient = jax.grad(representation.uniformity)(z, mask)
  np.testing.assert_array_equal(gradient[2], np.zeros(2))


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_uniformity_bandwidth_gradient(stop_gradient):
  # Median pair (0, 3) with d = 9: as a constant, or as a function of z.
  z = jnp.array([[0.0], [1.0], [3.0], [7.0]])
  pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]

  def reference(z):
    bandwidth = (z[2, 0] - z[0, 0]) ** 2
    if stop_gradient:
      bandwidth = jax.lax.stop_gradient(bandwidth)
    d = jnp.stack([jnp.sum((z[i] - z[j]) ** 2) for i, j in pairs])
    return jnp.mean(jnp.exp(-d / bandwidth))

  gradient = jax.grad(representation.uniformity)(
    z, jnp.ones(4, bool), stop_gradient
  )
  np.testing.assert_allclose(gradient, jax.grad(reference)(z), rtol=1e-5)


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_uniformity_identical_features_finite(stop_gradient):
  z = jnp.ones((4, 3))
  mask = jnp.ones(4, bool)
  assert float(representation.uniformity(z, mask, stop_gradient)) == 1.0
  gradient = jax.grad(representation.uniformity)(z, mask, stop_gradient)
  assert _finite(gradient)


@pytest.mark.parametrize("real_rows", [0, 1])
def test_uniformity_few_rows_is_zero(real_rows):
  z = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
  mask = jnp.arange(3) < real_rows
  for stop_gradient in (True, False):
    assert float(representation.uniformity(z, mask, stop_gradient)) == 0.0
    gradient = jax.grad(representation.uniformity)(z, mask, stop_gradient)
    assert _finite(gradient)


# ---- model-contrastive ------------------------------------------------------


def _contrastive_batch():
  # Row 1: cos(z, z_g) = 1, cos(z, z_p) = 0. Row 2: cos(z, z_g) = 1 /
  # sqrt(2), cos(z, z_p) = -1. Row 3 is padding.
  z = jnp.array([[1.0, 0.0], [1.0, 1.0], [3.0, -1.0]])
  z_global = jnp.array([[2.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
  z_previous = jnp.array([[0.0, 1.0], [-1.0, -1.0], [3.0, -1.0]])
  mask = jnp.array([True, True, False])
  return z, z_global, z_previous, mask


def test_model_contrastive_hand_value():
  z, z_global, z_previous, mask = _contrastive_batch()
  # -log(e^(a/t) / (e^(a/t) + e^(b/t))) = log(1 + e^((b - a) / t)), t = 0.5.
  row1 = math.log1p(math.exp((0.0 - 1.0) / 0.5))
  row2 = math.log1p(math.exp((-1.0 - ROOT_HALF) / 0.5))
  value = representation.model_contrastive(z, z_global, z_previous, 0.5, mask)
  assert float(value) == pytest.approx((row1 + row2) / 2, rel=1e-6)


def test_model_contrastive_equal_models_is_log2():
  z, z_global, _, mask = _contrastive_batch()
  value = representation.model_contrastive(z, z_global, z_global, 0.5, mask)
  assert float(value) == pytest.approx(math.log(2.0), rel=1e-6)


def test_model_contrastive_ignores_masked_rows():
  z, z_global, z_previous, mask = _contrastive_batch()
  moved = z.at[2].set(jnp.array([-7.0, 0.5]))
  a = representation.model_contrastive(z, z_global, z_previous, 0.5, mask)
  b = representation.model_contrastive(moved, z_global, z_previous, 0.5, mask)
  assert float(a) == float(b)
  gradient = jax.grad(representation.model_contrastive)(
    z, z_global, z_previous, 0.5, mask
  )
  np.testing.assert_array_equal(gradient[2], np.zeros(2))


def test_model_contrastive_frozen_models():
  z, z_global, z_previous, mask = _contrastive_batch()
  grads = jax.grad(representation.model_contrastive, argnums=(1, 2))(
    z, z_global, z_previous, 0.5, mask
  )
  for gradient in grads:
    np.testing.assert_array_equal(gradient, np.zeros_like(gradient))


def test_model_contrastive_one_row_and_no_rows():
  z, z_global, z_previous, _ = _contrastive_batch()
  one = representation.model_contrastive(
    z, z_global, z_previous, 0.5, jnp.array([True, False, False])
  )
  assert float(one) == pytest.approx(math.log1p(math.exp(-2.0)), rel=1e-6)
  none = jnp.zeros(3, bool)
  assert (
    float(representation.model_contrastive(z, z_global, z_previous, 0.5, none))
    == 0.0
  )
  gradient = jax.grad(representation.model_contrastive)(
    z, z_global, z_previous, 0.5, none
  )
  assert _finite(gradient)


def test_model_contrastive_zero_vectors_finite():
  zeros = jnp.zeros((2, 3))
  mask = jnp.ones(2, bool)
  value = representation.model_contrastive(zeros, zeros, zeros, 0.5, mask)
  assert float(value) == pytest.approx(math.log(2.0), rel=1e-6)
  gradient = jax.grad(representation.model_contrastive)(
    zeros, zeros, zeros, 0.5, mask
  )
  assert _finite(gradient)
