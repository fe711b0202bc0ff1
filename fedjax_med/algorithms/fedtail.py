"""FEDTAIL: sharpness-aware local training with head-tail gradient matching.

Reference: S. Gupta, N. Jangid, S. Das, A. Sethi, "FEDTAIL: Federated
Long-Tailed Domain Generalization with Sharpness-Guided Gradient Matching",
ICML 2025 Workshop on Collaborative and Federated Agentic Workflows,
arXiv:2506.08518.

This module is a reconstruction, not the authors' method. Only the paper's
abstract was available and its code repository contains no code. The
abstract names a gradient-coherence regularizer, class-wise sharpness
minimization and a weighting that favours the tail, for domain
generalization with a domain discriminator. This library keeps the part that
applies to long-tailed labels in a federation and drops the domain
discriminator, because a client here holds one site and no domain labels.

Every local step of a client, on a batch `B`:

  1. Splits the rows of `B` into head and tail by their label. The tail
     classes are fixed before training from the global class counts (the
     sum of the clients' label histograms) by
     `fedjax_med.losses.class_statistics.tail_classes`: the rarest classes
     that together hold at most `tail_fraction` of the training examples.
  2. Forms the matched objective
       F(w) = L_B(w) + matching_weight * (1 - cos(grad L_head(w),
                                                  grad L_tail(w))),
     where `L_B`, `L_head` and `L_tail` are the mean losses over the batch,
     its head rows and its tail rows. The cosine term is 0 for a batch
     without head rows or without tail rows. Its gradient needs second
     derivatives (double backpropagation through the model).
  3. Takes a sharpness-aware (SAM) gradient of `F` (Foret, Kleiner, Mobahi,
     Neyshabur, "Sharpness-Aware Minimization for Efficiently Improving
     Generalization", ICLR 2021, arXiv:2010.01412): with `g = grad F(w)`,
     `eps = rho * g / ||g||`, the step uses `grad F(w + eps)`. The same
     batch and dropout keys serve both gradients.

The local optimizer then applies that gradient, and the server averages the
deltas as FedAvg does. With `rho = 0` and `matching_weight = 0` the step is
plain minibatch SGD on `L_B`, so FEDTAIL is FedAvg with a different batch
sampler.

Choices this reconstruction makes:
  * Batches are drawn with `fixed_size_batch`: `min(batch_size, n_k)`
    distinct rows, uniformly at random and independently at every step,
    because the local-training hook receives each step's key but not its
    index. FedAvg instead walks through epochs. When a batch holds all of a
    client's rows, both see the same data at every step.
  * The tail classes are computed once from the training split passed to
    `fedtail`, so they reveal the global label histogram to every client.
  * Models with non-trainable state (batch normalization) are rejected,
    like under DP-SGD, because the hook computes per-example losses.
  * Defaults: `rho = 0.05` (the SAM default), `matching_weight = 0.1`,
    `tail_fraction = 0.2`. They are not tuned.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax import tree_utils as otu

from fedjax_med import losses
from fedjax_med.algorithms.fedavg import (
  ClientConfig,
  ClientHooks,
  CohortConfig,
  Schedule,
  as_schedule,
  build_fedavg_family,
)
from fedjax_med.core.aggregation import Aggregator
from fedjax_med.core.algorithm import FederatedAlgorithm
from fedjax_med.core.client import ClientBatch
from fedjax_med.losses import class_statistics
from fedjax_med.models.base import Model
from fedjax_med.privacy import dp_sgd

PyTree = Any

# Added to the squared norm products so that a zero gradient gives a
# cosine of 0 instead of NaN.
_NORM_EPSILON = 1e-20
# SAM's guard against dividing by a zero gradient norm.
_SAM_EPSILON = 1e-12


class FedTailConfig(NamedTuple):
  """FEDTAIL's choices.

  Attributes:
    rho: SAM perturbation radius; 0 turns SAM off.
    matching_weight: Weight of the head-tail gradient mismatch `1 - cos`;
      0 turns matching off.
    tail_fraction: The tail is the rarest classes that together hold at
      most this share of the training examples, in (0, 1).
  """

  rho: float = 0.05
  matching_weight: float = 0.1
  tail_fraction: float = 0.2


def gradient_cosine(a: PyTree, b: PyTree) -> jax.Array:
  """Returns the cosine between two pytrees, 0 if either is zero."""
  dot = otu.tree_vdot(a, b)
  squared = otu.tree_norm(a, squared=True) * otu.tree_norm(b, squared=True)
  return dot / jnp.sqrt(squared + _NORM_EPSILON)


def make_batch_gradient(
  config: FedTailConfig, batch_size: int, tail_mask: np.ndarray
):
  """Builds FEDTAIL's local gradient step for `local_train`.

  Args:
    config: FEDTAIL's settings.
    batch_size: Examples per step (static).
    tail_mask: `[num_classes]` bool, True for tail classes.

  Returns:
    `batch_gradient(example_loss, params, batch, key) -> (gradient,
    data_loss)`, where `data_loss` is the batch's mean loss at `params`.
  """
  tail = jnp.asarray(tail_mask, bool)

  def batch_gradient(example_loss, params, batch: ClientBatch, key):
    sample_key, dropout_key = jax.random.split(key)
    indices, mask = dp_sgd.fixed_size_batch(
      sample_key, batch.num_examples, batch.x.shape[0], batch_size
    )
    x = jnp.take(batch.x, indices, axis=0)
    y = jnp.take(batch.y, indices, axis=0)
    rngs = jax.random.split(dropout_key, indices.shape[0])
    tail_rows = mask & tail[y]
    head_rows = mask & ~tail[y]
    both_present = jnp.any(tail_rows) & jnp.any(head_rows)

    def mean_loss(params, rows):
      values = jax.vmap(example_loss, in_axes=(None, 0, 0, 0))(
        params, x, y, rngs
      )
      return losses.masked_mean(values, rows)

    def objective(params):
      data_loss = mean_loss(params, mask)
      if config.matching_weight == 0:
        return data_loss, data_loss
      head_gradient = jax.grad(mean_loss)(params, head_rows)
      tail_gradient = jax.grad(mean_loss)(params, tail_rows)
      mismatch = 1.0 - gradient_cosine(head_gradient, tail_gradient)
      mismatch = jnp.where(both_present, mismatch, 0.0)
      return data_loss + config.matching_weight * mismatch, data_loss

    gradient, data_loss = jax.grad(objective, has_aux=True)(params)
    if config.rho > 0:
      scale = config.rho / (otu.tree_norm(gradient) + _SAM_EPSILON)
      perturbed = otu.tree_add_scale(params, scale, gradient)
      gradient, _ = jax.grad(objective, has_aux=True)(perturbed)
    return gradient, data_loss

  return batch_gradient


def validate_config(config: FedTailConfig) -> None:
  """Raises ValueError for settings FEDTAIL cannot use."""
  if not config.rho >= 0:
    raise ValueError(
      f"fedtail rho={config.rho} must be >= 0; 0.05 is the SAM default and "
      "0 turns the sharpness-aware step off."
    )
  if not config.matching_weight >= 0:
    raise ValueError(
      f"fedtail matching_weight={config.matching_weight} must be >= 0; 0 "
      "turns head-tail gradient matching off."
    )
  if not 0.0 < config.tail_fraction < 1.0:
    raise ValueError(
      f"fedtail tail_fraction={config.tail_fraction} must lie in (0, 1), "
      "e.g. 0.2."
    )


def fedtail(
  model: Model,
  num_clients: int,
  *,
  class_counts,
  client: ClientConfig,
  cohort: CohortConfig,
  config: FedTailConfig | None = None,
  server_learning_rate: float | Schedule = 1.0,
  aggregator: Aggregator | None = None,
  dataset_name: str = "the dataset",
) -> FederatedAlgorithm:
  """FEDTAIL as reconstructed in the module docstring.

  Args:
    model: The network, without non-trainable state.
    num_clients: Clients in the population.
    class_counts: `[num_classes]` global training examples per class, which
      fix the tail classes.
    client: Local training settings; `client.dp_sgd` must be None.
    cohort: Cohort sampling, chunking and weighting.
    config: FEDTAIL's settings; None takes the defaults.
    server_learning_rate: FedAvg's server step size.
    aggregator: Replaces the weighted mean of the deltas.
    dataset_name: Used in error messages.

  Raises:
    ValueError: For invalid settings, or DP-SGD in `client`.
  """
  config = config or FedTailConfig()
  validate_config(config)
  tail_mask = class_statistics.tail_mask(class_counts, config.tail_fraction)
  hooks = ClientHooks(
    batch_gradient=make_batch_gradient(config, client.batch_size, tail_mask)
  )
  schedule = as_schedule(server_learning_rate, "server learning_rate")
  return build_fedavg_family(
    model,
    num_clients,
    client=client,
    cohort=cohort,
    server_optimizer=optax.sgd(schedule),
    hooks=hooks,
    aggregator=aggregator,
    dataset_name=dataset_name,
  )
