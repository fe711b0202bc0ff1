"""Layers that vmap well over per-client weights.

Federated simulation vmaps a model over a leading client axis of its
parameters. For a convolution, `jax.vmap` of `lax.conv_general_dilated` over
the kernel becomes one grouped convolution (a feature group per client), and
XLA:CPU runs grouped convolutions several times slower than a loop over
clients. The module docstring of `fedjax_med.models.cnn` gives the timings.

`conv2d_patches` writes the convolution as image patches times a matrix:
`lax.conv_general_dilated_patches` extracts every receptive field as a vector
of `patch_features = in_channels * kernel_height * kernel_width` values, and
an einsum with a `[patch_features, out_channels]` matrix finishes the
convolution. Under vmap over the weights this becomes a batched matrix
product instead of a grouped convolution. The cost is memory: the patches
tensor is `kernel_height * kernel_width` times the size of the input (for
stride 1 and SAME padding).

`Conv2D` stores its kernel in the layout of `flax.linen.Conv`
(`[kernel_height, kernel_width, in_channels, out_channels]`) and reshapes it
to the matrix inside the call, so parameters are interchangeable between
`conv_impl="patches"` and `conv_impl="lax"`.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("patches", "lax")

# Image layout [batch, height, width, channels]; kernel layout
# [kernel_height, kernel_width, in_channels, out_channels].
_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def conv2d_patches(
  x: jax.Array,
  kernel: jax.Array,
  strides: Sequence[int] = (1, 1),
  padding: str = "SAME",
) -> jax.Array:
  """Computes a 2-D convolution as image patches times a matrix.

  The result equals `lax.conv_general_dilated(x, kernel, strides, padding,
  dimension_numbers=("NHWC", "HWIO", "NHWC"))` up to float rounding.

  Args:
    x: Images, shape `[batch, height, width, in_channels]`.
    kernel: Shape `[kernel_height, kernel_width, in_channels, out_channels]`.
    strides: Window strides `(stride_height, stride_width)`.
    padding: "SAME" or "VALID".

  Returns:
    Shape `[batch, out_height, out_width, out_channels]`.
  """
  kernel_height, kernel_width, in_channels, out_channels = kernel.shape
  if x.shape[-1] != in_channels:
    raise ValueError(
      f"Input has {x.shape[-1]} channels (shape {x.shape}) but the kernel "
      f"expects {in_channels} (kernel shape {kernel.shape}); the last axis "
      "of x must be the channel axis."
    )

  # The patches' feature axis is ordered (in_channels, kernel_height,
  # kernel_width), channel-major, so the kernel is transposed to match.
  patches = lax.conv_general_dilated_patches(
    x,
    filter_shape=(kernel_height, kernel_width),
    window_strides=tuple(strides),
    padding=padding,
    dimension_numbers=_DIMENSION_NUMBERS,
  )
  matrix = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(-1, out_channels)
  return jnp.einsum("bhwp,po->bhwo", patches, matrix)


class Conv2D(nn.Module):
  """2-D convolution over `[batch, height, width, channels]` images.

  Attributes:
    features: Number of output channels.
    kernel_size: `(kernel_height, kernel_width)`.
    strides: `(stride_height, stride_width)`.
    padding: "SAME" or "VALID".
    conv_impl: "patches" (image patches times a matrix, fast under vmap over
      weights) or "lax" (`lax.conv_general_dilated`, the `nn.Conv` path).
  """

  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: tuple[int, int] = (1, 1)
  padding: str = "SAME"
  conv_impl: str = "patches"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.conv_impl not in CONV_IMPLS:
      raise ValueError(
        f"conv_impl={self.conv_impl!r} is not supported; use one of "
        f"{CONV_IMPLS}."
      )
    if x.ndim != 4:
      raise ValueError(
        f"Conv2D expects images of shape [batch, height, width, channels], "
        f"got shape {x.shape}."
      )

    kernel_shape = (*self.kernel_size, x.shape[-1], self.features)
    kernel = self.param("kernel", nn.initializers.lecun_normal(), kernel_shape)
    bias = self.param("bias", nn.initializers.zeros, (self.features,))

    if self.conv_impl == "patches":
      y = conv2d_patches(x, kernel, self.strides, self.padding)
    else:
      y = lax.conv_general_dilated(
        x,
        kernel,
        window_strides=self.strides,
        padding=self.padding,
        dimension_numbers=_DIMENSION_NUMBERS,
      )
    return y + bias
