"""Logistic regression: one dense layer from flattened features to logits.

With one output (a binary task) this is classic logistic regression, whose
logit is the log-odds of class 1. With `num_classes` outputs it is
multinomial (softmax) regression.
"""

from __future__ import annotations

import flax.linen as nn
import jax


class LogisticRegression(nn.Module):
  """A linear map from flattened features to logits.

  Attributes:
    num_outputs: Width of the logits (see `num_outputs_for`).
  """

  num_outputs: int

  @nn.compact
  def __call__(
    self, x: jax.Array, train: bool = False, return_features: bool = False
  ):
    """Maps `x` of shape `[batch, *feature_shape]` to `[batch, num_outputs]`.

    `train` is accepted for the `from_flax` contract and has no effect. With
    `return_features` it returns `(logits, features)`, the features being
    the flattened input.
    """
    del train
    x = x.reshape(x.shape[0], -1)
    logits = nn.Dense(self.num_outputs)(x)
    return (logits, x) if return_features else logits
