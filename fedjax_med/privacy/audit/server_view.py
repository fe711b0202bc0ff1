"""What an honest-but-curious server observes of one round's updates.

The gradient-inversion audit attacks this view. For a batch `(x_k, y_k)` on
each of `K` clients, with `g_k` the gradient of client `k`'s batch-mean
cross-entropy at the global parameters:

  mode       K = 1 (plain aggregation)      K > 1 (secure aggregation)
  "none"     g_1                            sum_k g_k
  "client"   clip(g_1) + N(0, (zC)^2)       sum_k clip(g_k) + N(0, (zC)^2)
  "example"  DP-SGD step of client 1        sum_k (DP-SGD step of client k)

`clip` scales to L2 norm at most `C` over all leaves. Under client-level DP
(DP-FedAvg) the noise is added once to the sum, as the aggregator does. The
aggregator's division by the public expected cohort size is left out,
because a public constant gives the attacker nothing. A DP-SGD step clips
each example's gradient to `C`, sums, adds `N(0, (zC)^2)` and divides by
the batch size, and each client adds its own noise. Secure aggregation
reveals only the sum over the `K` clients, so the attacker inverts that sum.

The clipping and noise are those of `fedjax_med.privacy.clipping` and
`fedjax_med.privacy.dp_sgd`, the same code the training round runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from optax import tree_utils as otu

from fedjax_med import losses
from fedjax_med.models.base import Model
from fedjax_med.privacy import clipping, dp_sgd
from fedjax_med.privacy.audit.gradient_inversion import (
  batch_gradient,
  one_hot_labels,
)

PyTree = Any

MODES = ("none", "client", "example")


def _example_dp_gradient(
  model: Model,
  params: PyTree,
  x: jax.Array,
  y: jax.Array,
  clip_norm: float,
  noise_multiplier: float,
  key: jax.Array,
) -> PyTree:
  """Computes one DP-SGD gradient: clipped per-example sum, noise, mean."""

  def example_loss(p, example_x, example_y, rng):
    del rng  # The attack's models are applied without dropout.
    logits, _ = model.apply({"params": p}, example_x[None], train=False)
    return losses.cross_entropy(logits, example_y[None])[0]

  num_examples = x.shape[0]
  mask = jnp.ones((num_examples,), bool)
  rngs = jax.random.split(key, num_examples)
  summed, _, _ = dp_sgd.clipped_gradient_sum(
    example_loss, params, x, y, mask, rngs, clip_norm
  )
  noisy = clipping.add_gaussian_noise(summed, noise_multiplier * clip_norm, key)
  return otu.tree_scale(1.0 / num_examples, noisy)


def observed_update(
  model: Model,
  params: PyTree,
  batches: Sequence[tuple[np.ndarray, np.ndarray]],
  *,
  mode: str,
  key: jax.Array,
  clip_norm: float = 1.0,
  noise_multiplier: float = 0.0,
) -> PyTree:
  """Computes the update the server receives from the clients' batches.

  Args:
    model: The network, without non-trainable state.
    params: Global parameters the clients start from.
    batches: One `(x [batch, *feature_shape], y [batch])` pair per client.
      One pair is plain aggregation, and several are a secure sum.
    mode: "none", "client" (DP-FedAvg) or "example" (DP-SGD), as in the
      module docstring.
    key: PRNG key of the noise.
    clip_norm: `C`, the L2 bound of a client's update ("client") or of an
      example's gradient ("example").
    noise_multiplier: `z`. The noise standard deviation is `z * C`.

  Returns:
    A gradient pytree shaped like `params`.

  Raises:
    ValueError: For an unknown mode, no batches, or invalid DP settings.
  """
  if mode not in MODES:
    raise ValueError(f"mode={mode!r} is unknown; use one of {MODES}.")
  if not batches:
    raise ValueError("observed_update needs at least one client batch.")
  if mode != "none":
    clipping.validate_dp_settings(clip_norm, noise_multiplier)

  client_keys = jax.random.split(key, len(batches) + 1)
  views = []
  for (x, y), client_key in zip(batches, client_keys[1:], strict=False):
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if mode == "example":
      views.append(
        _example_dp_gradient(
          model, params, x, y, clip_norm, noise_multiplier, client_key
        )
      )
      continue
    gradient = batch_gradient(
      model, params, x, one_hot_labels(y, model.num_outputs)
    )
    if mode == "client":
      gradient, _ = clipping.clip_by_global_norm(gradient, clip_norm)
    views.append(gradient)

  total = jax.tree.map(lambda *leaves: sum(leaves), *views)
  if mode == "client":
    total = clipping.add_gaussian_noise(
      total, noise_multiplier * clip_norm, client_keys[0]
    )
  return total
