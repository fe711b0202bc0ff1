"""Aggregators: how client deltas become one server update.

An `Aggregator` owns two steps of the round and the state they share:

  1. `postprocess`, per client inside the vmapped cohort map: it may clip,
     quantize or mask the client's delta and its aggregation weight, and may
     return extra values to be summed over the cohort (for example, whether
     the delta needed clipping, for adaptive clipping).
  2. `finalize`, once per round on the cohort's sums: it turns the weighted
     sum of deltas into the update the server optimizer sees (a weighted
     mean, a noisy sum over a public denominator, ...) and updates the
     aggregator's state.

The default `weighted_mean()` divides by the realised total weight and skips
the server step when the cohort holds no data. Differentially private
aggregators must instead divide by a public constant and still step on an
empty cohort, so that the output does not reveal who took part.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from optax import tree_utils as otu

PyTree = Any


class Finalized(NamedTuple):
  """Result of `Aggregator.finalize`.

  Attributes:
    mean_delta: The update direction the server optimizer negates and
      applies, shaped like "params".
    apply_update: Bool scalar; False leaves parameters, model state and the
      server optimizer state as they were this round.
    state: The aggregator's new state.
    metrics: Scalars to log.
  """

  mean_delta: PyTree
  apply_update: jax.Array
  state: PyTree
  metrics: dict[str, jax.Array]


class Aggregator(NamedTuple):
  """The per-client and per-round steps of aggregation.

  Attributes:
    init: `params -> state`.
    postprocess: `(delta, weight, state, key, *, client_id, cohort) ->
      (delta, weight, extra)`, run for each client; `extra` is a pytree
      summed over the cohort. `client_id` is the client's scalar id and
      `cohort` the round's `Cohort` (secure aggregation masks each input
      against the rest of the cohort).
    finalize: `(weighted_delta_sum, weight_sum, extra_sum, cohort_size,
      state, key) -> Finalized`, run once per round. `weighted_delta_sum`
      is `sum_k weight_k * delta_k` over the cohort's clients.
  """

  init: Callable[[PyTree], PyTree]
  postprocess: Callable[..., tuple[PyTree, jax.Array, PyTree]]
  finalize: Callable[..., Finalized]


def weighted_mean() -> Aggregator:
  """Weighted mean of the deltas by their realised weights (plain FedAvg)."""

  def init(params):
    del params
    return ()

  def postprocess(delta, weight, state, key, *, client_id, cohort):
    del state, key, client_id, cohort
    return delta, weight, ()

  def finalize(weighted_sum, weight_sum, extra_sum, cohort_size, state, key):
    del extra_sum, cohort_size, key
    has_data = weight_sum > 0
    inverse = jnp.where(has_data, 1.0 / jnp.maximum(weight_sum, 1e-12), 0.0)
    mean_delta = otu.tree_scale(inverse, weighted_sum)
    return Finalized(mean_delta, has_data, state, {})

  return Aggregator(init, postprocess, finalize)
