"""Haiku versions of logistic regression and the MLP.

They have the architecture of `LogisticRegression` and `MLP` (without batch
normalization) and go through `from_haiku`, so algorithms call them with the
same `init`/`apply` pair as the flax models. Their parameters are
`variables["params"]` with haiku's names ("linear" for logistic regression,
"mlp/~/linear_0", "mlp/~/linear_1", ... for the MLP) and weight matrices
`w` of shape `[in_features, out_features]`, like flax's `kernel`.
"""

from __future__ import annotations

from collections.abc import Sequence

import haiku as hk
import jax

from fedjax_med.models.base import Model, from_haiku


def haiku_logistic_regression(num_outputs: int) -> Model:
  """Builds logistic regression: one `hk.Linear` on flattened features.

  Args:
    num_outputs: Width of the logits (see `num_outputs_for`).

  Returns:
    A `Model` mapping `[batch, *feature_shape]` to `[batch, num_outputs]`.
  """

  def forward(x: jax.Array, train: bool) -> jax.Array:
    del train
    x = hk.Flatten()(x)
    return hk.Linear(num_outputs, name="linear")(x)

  return from_haiku(hk.transform_with_state(forward), num_outputs)


def haiku_mlp(
  num_outputs: int, hidden_sizes: Sequence[int] = (64, 64)
) -> Model:
  """Builds an MLP with ReLU between `hk.Linear` layers (`hk.nets.MLP`).

  Args:
    num_outputs: Width of the logits (see `num_outputs_for`).
    hidden_sizes: Width of each hidden layer; empty for no hidden layer.

  Returns:
    A `Model` mapping `[batch, *feature_shape]` to `[batch, num_outputs]`.
  """
  output_sizes = [*hidden_sizes, num_outputs]

  def forward(x: jax.Array, train: bool) -> jax.Array:
    del train
    x = hk.Flatten()(x)
    return hk.nets.MLP(output_sizes, activation=jax.nn.relu, name="mlp")(x)

  return from_haiku(hk.transform_with_state(forward), num_outputs)
