"""A small convolutional network for images `[batch, height, width, channels]`.

Each block is a 3x3 convolution with SAME padding, ReLU, and 2x2 max pooling
with stride 2 while both spatial sizes are at least 2 (pooling drops an odd
last row or column). The default channels (16, then 32) turn 8x8x1 digits
into 2x2x32 features, which a dense head maps to logits.

Federated simulation vmaps the model over per-client weights, so the
convolution is written as image patches times a matrix:
`lax.conv_general_dilated_patches`, then an einsum with a
`[patch_features, out_channels]` kernel matrix plus bias (see
`layers.Conv2D`). `jax.vmap` of `lax.conv_general_dilated` over the kernel
becomes a grouped convolution, which XLA:CPU runs very slowly. On this
project's CPU machines, one round of a two-layer CNN with 32 clients and 4
local steps took 40 s vmapped with `lax.conv` and 7.5 s as a Python loop over
clients. Vmapped as patches times a matrix, it took 2.5 s.

With `use_batch_norm=True` each convolution is followed by BatchNorm before
the ReLU. BatchNorm normalizes with the batch's statistics when `train=True`
and updates its running mean and variance in the "batch_stats" collection.
With `train=False` it uses the running statistics. Under vmap over clients
each client normalizes with its own batch, because no `axis_name` ties the
clients together.

`conv_impl="lax"` keeps the plain `lax.conv_general_dilated` path (what
`nn.Conv` runs) so that benchmarks can measure both on each backend. Both
implementations take the same parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from fedjax_med.models.layers import Conv2D


class CNN(nn.Module):
  """Convolution blocks with max pooling, then a dense head.

  Attributes:
    num_outputs: Width of the logits (see `num_outputs_for`).
    channels: Output channels of each convolution block.
    kernel_size: `(kernel_height, kernel_width)` of every convolution.
    conv_impl: "patches" (default, fast under vmap over weights) or "lax".
    use_batch_norm: Whether to add BatchNorm after each convolution.
  """

  num_outputs: int
  channels: Sequence[int] = (16, 32)
  kernel_size: tuple[int, int] = (3, 3)
  conv_impl: str = "patches"
  use_batch_norm: bool = False

  @nn.compact
  def __call__(
    self, x: jax.Array, train: bool = False, return_features: bool = False
  ):
    """Maps images `[batch, height, width, channels]` to logits.

    `train` selects batch statistics (True) or running statistics (False)
    in BatchNorm, and has no effect without it.

    Returns:
      Logits of shape `[batch, num_outputs]`, or `(logits, features)` with
      `return_features`, the features being the flattened last block.
    """
    if x.ndim != 4:
      raise ValueError(
        f"CNN expects images of shape [batch, height, width, channels], got "
        f"shape {x.shape}; load the images with as_images=True."
      )

    for features in self.channels:
      x = Conv2D(
        features,
        kernel_size=tuple(self.kernel_size),
        padding="SAME",
        conv_impl=self.conv_impl,
      )(x)
      if self.use_batch_norm:
        x = nn.BatchNorm(use_running_average=not train)(x)
      x = nn.relu(x)
      if x.shape[1] >= 2 and x.shape[2] >= 2:
        x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))

    x = x.reshape(x.shape[0], -1)
    logits = nn.Dense(self.num_outputs)(x)
    return (logits, x) if return_features else logits
