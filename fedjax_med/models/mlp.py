"""Multilayer perceptron with ReLU and optional batch normalization.

With `use_batch_norm=True` each hidden layer is Dense, then BatchNorm, then
ReLU. BatchNorm normalizes with the batch's statistics when `train=True` and
updates its running mean and variance, which live in the "batch_stats"
collection. With `train=False` it normalizes with the running statistics and
leaves them unchanged. Under vmap over clients each client normalizes with
its own batch, because no `axis_name` ties the clients together.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax


class MLP(nn.Module):
  """Dense layers with ReLU between them and a dense head.

  Attributes:
    num_outputs: Width of the logits (see `num_outputs_for`).
    hidden_sizes: Width of each hidden layer; empty for no hidden layer.
    use_batch_norm: Whether to add BatchNorm after each hidden Dense layer.
  """

  num_outputs: int
  hidden_sizes: Sequence[int] = (64, 64)
  use_batch_norm: bool = False

  @nn.compact
  def __call__(
    self, x: jax.Array, train: bool = False, return_features: bool = False
  ):
    """Maps `x` of shape `[batch, *feature_shape]` to `[batch, num_outputs]`.

    `train` selects batch statistics (True) or running statistics (False)
    in BatchNorm, and has no effect without it. With `return_features` it
    returns `(logits, features)`, the features being the last hidden layer's
    activations (the flattened input without hidden layers).
    """
    x = x.reshape(x.shape[0], -1)
    for size in self.hidden_sizes:
      x = nn.Dense(size)(x)
      if self.use_batch_norm:
        x = nn.BatchNorm(use_running_average=not train)(x)
      x = nn.relu(x)
    logits = nn.Dense(self.num_outputs)(x)
    return (logits, x) if return_features else logits
