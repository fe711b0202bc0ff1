"""Tests for the patches-times-matrix convolution and the Conv2D layer."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fedjax_med.models.layers import Conv2D, conv2d_patches

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")

# (batch, height, width, in_channels, kernel_height, kernel_width,
#  out_channels)
SHAPES = [
  (2, 8, 8, 1, 3, 3, 16),
  (3, 5, 7, 4, 2, 3, 6),
  (1, 6, 6, 3, 5, 5, 2),
  (4, 4, 4, 16, 3, 3, 32),
  (2, 9, 3, 2, 1, 1, 5),
]


def _random_inputs(shape, seed=0):
  batch, height, width, in_ch, kernel_h, kernel_w, out_ch = shape
  x_key, kernel_key = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(x_key, (batch, height, width, in_ch))
  kernel = jax.random.normal(kernel_key, (kernel_h, kernel_w, in_ch, out_ch))
  return x, kernel


def _lax_conv(x, kernel, strides, padding):
  return lax.conv_general_dilated(
    x,
    kernel,
    window_strides=strides,
    padding=padding,
    dimension_numbers=DIMENSION_NUMBERS,
    precision=lax.Precision.HIGHEST,
  )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("strides", [(1, 1), (2, 1)])
def test_conv2d_patches_matches_lax_conv(shape, padding, strides):
  x, kernel = _random_inputs(shape)

  expected = _lax_conv(x, kernel, strides, padding)
  actual = jax.jit(conv2d_patches, static_argnums=(2, 3))(
    x, kernel, strides, padding
  )

  assert actual.shape == expected.shape
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_conv2d_patches_gradients_match_lax_conv(padding):
  x, kernel = _random_inputs(SHAPES[1], seed=1)

  def loss(conv, x, kernel):
    return jnp.sum(jnp.sin(conv(x, kernel, (1, 1), padding)))

  expected = jax.grad(lambda *a: loss(_lax_conv, *a), argnums=(0, 1))(x, kernel)
  actual = jax.grad(lambda *a: loss(conv2d_patches, *a), argnums=(0, 1))(
    x, kernel
  )

  np.testing.assert_allclose(actual[0], expected[0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(actual[1], expected[1], rtol=1e-4, atol=1e-5)


def test_conv2d_patches_rejects_channel_mismatch():
  x = jnp.ones((2, 5, 5, 3))
  kernel = jnp.ones((3, 3, 4, 8))
  with pytest.raises(ValueError, match="3 channels"):
    conv2d_patches(x, kernel)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_conv2d_impls_agree_with_nn_conv(padding):
  x, _ = _random_inputs(SHAPES[0], seed=2)
  layer = Conv2D(16, kernel_size=(3, 3), padding=padding)
  variables = layer.init(jax.random.key(3), x)
  # Nonzero bias, so that a layer dropping the bias fails.
  variables = jax.tree.map(lambda a: a + 0.1, variables)

  patches = layer.apply(variables, x)
  plain = layer.clone(conv_impl="lax").apply(variables, x)
  reference = nn.Conv(16, kernel_size=(3, 3), padding=padding).apply(
    variables, x
  )

  np.testing.assert_allclose(patches, reference, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(plain, reference, rtol=1e-5, atol=1e-5)


def test_conv2d_params_match_nn_conv_layout():
  x = jnp.ones((1, 6, 6, 3))
  key = jax.random.key(0)
  ours = jax.eval_shape(Conv2D(8, kernel_size=(3, 2)).init, key, x)
  flax_conv = jax.eval_shape(nn.Conv(8, kernel_size=(3, 2)).init, key, x)

  assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, flax_conv)


def test_conv2d_rejects_unknown_impl():
  layer = Conv2D(4, conv_impl="fft")
  with pytest.raises(ValueError, match="conv_impl='fft'"):
    layer.init(jax.random.key(0), jnp.ones((1, 4, 4, 1)))


def test_conv2d_patches_vmaps_over_kernels():
  x, kernel = _random_inputs(SHAPES[0], seed=4)
  num_clients = 3
  xs = jnp.stack([x + i for i in range(num_clients)])
  kernels = jnp.stack([kernel * (i + 1) for i in range(num_clients)])

  vmapped = jax.vmap(conv2d_patches)(xs, kernels)

  for i in range(num_clients):
    expected = _lax_conv(xs[i], kernels[i], (1, 1), "SAME")
    np.testing.assert_allclose(vmapped[i], expected, rtol=1e-5, atol=1e-4)
