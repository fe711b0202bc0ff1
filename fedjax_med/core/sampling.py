"""Cohort sampling with fixed shapes.

A cohort is a fixed-length vector of client ids plus a mask. Uniform sampling
without replacement fills every slot. Poisson sampling includes each client
independently with probability `rate`; its cohort has `capacity` slots, the
sampled clients first and the rest masked out, so the round's shapes never
depend on how many were drawn and an empty cohort is a valid input.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Cohort(NamedTuple):
  """Clients taking part in one round.

  Attributes:
    client_ids: Shape `[capacity]`, int32 ids into the client axis.
    mask: Shape `[capacity]`, bool; False for unused slots.
  """

  client_ids: jax.Array
  mask: jax.Array


SAMPLING_METHODS = ("uniform", "poisson")


def sample_uniform(
  key: jax.Array, num_clients: int, clients_per_round: int
) -> Cohort:
  """Draws `clients_per_round` distinct clients uniformly at random."""
  ids = jax.random.choice(
    key, num_clients, (clients_per_round,), replace=False
  ).astype(jnp.int32)
  return Cohort(ids, jnp.ones((clients_per_round,), bool))


def sample_poisson(
  key: jax.Array, num_clients: int, rate: float, capacity: int
) -> Cohort:
  """Includes each client independently with probability `rate`.

  With `capacity == num_clients` this is exact Poisson sampling. With a
  smaller capacity, clients drawn beyond it are dropped (the lowest ids are
  kept), which biases the cohort; `Cohort.mask.sum()` then understates the
  draw, so callers that need the exact size should use full capacity.
  """
  included = jax.random.bernoulli(key, rate, (num_clients,))
  # Stable sort puts the included clients first, in id order.
  order = jnp.argsort(~included, stable=True).astype(jnp.int32)
  ids = order[:capacity]
  return Cohort(ids, included[ids])


def validate_sampling(
  sampling: str,
  num_clients: int,
  clients_per_round: int,
  poisson_rate: float | None,
  dataset_name: str = "the dataset",
) -> None:
  """Raises ValueError for a cohort request the population cannot meet."""
  if sampling not in SAMPLING_METHODS:
    raise ValueError(
      f"sampling={sampling!r} is unknown; use one of {SAMPLING_METHODS}."
    )
  if sampling == "uniform":
    if clients_per_round < 1:
      raise ValueError(
        f"clients_per_round={clients_per_round} must be at least 1."
      )
    if clients_per_round > num_clients:
      raise ValueError(
        f"clients_per_round={clients_per_round} exceeds the {num_clients} "
        f"clients in {dataset_name}; lower it to at most {num_clients} or "
        "use sampling='poisson'."
      )
  else:
    if poisson_rate is None or not 0.0 < poisson_rate <= 1.0:
      raise ValueError(
        f"poisson_rate={poisson_rate} must be in (0, 1] for "
        "sampling='poisson'; set it to the expected fraction of clients "
        "per round."
      )
    if not 1 <= clients_per_round <= num_clients:
      raise ValueError(
        f"clients_per_round={clients_per_round} is the Poisson cohort's "
        f"capacity and must be in [1, {num_clients}] for {dataset_name}; "
        f"use {num_clients} for exact Poisson sampling."
      )


def make_sampler(
  sampling: str,
  num_clients: int,
  clients_per_round: int,
  poisson_rate: float | None = None,
  dataset_name: str = "the dataset",
):
  """Returns `sample(key) -> Cohort` for the configured method.

  For "poisson", `clients_per_round` is the cohort's capacity (slots); use
  `num_clients` for exact Poisson sampling.
  """
  validate_sampling(
    sampling, num_clients, clients_per_round, poisson_rate, dataset_name
  )
  if sampling == "uniform":
    return lambda key: sample_uniform(key, num_clients, clients_per_round)
  return lambda key: sample_poisson(
    key, num_clients, poisson_rate, clients_per_round
  )
