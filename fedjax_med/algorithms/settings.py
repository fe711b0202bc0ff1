"""Settings of the FedAvg family's local training and cohort.

`ClientConfig` and `CohortConfig` are the static settings every FedAvg-family
factory takes; the helpers validate them and turn learning rates into
schedules over rounds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import optax
from jax.sharding import Mesh

from fedjax_med import losses
from fedjax_med.compression.payload import Compressor
from fedjax_med.privacy import dp_sgd

Schedule = Callable[[jax.Array], jax.Array]

WEIGHTINGS = ("example", "uniform")
CLIENT_OPTIMIZERS = ("sgd", "momentum", "adam")


class CompressionConfig(NamedTuple):
  """Compression of what clients send and receive each round.

  Attributes:
    uplink: Applied to every client's delta before aggregation (see
      `fedjax_med.algorithms.communication`); None sends it uncompressed.
    downlink: Applied to the change of the broadcast model; None
      broadcasts the model uncompressed.
  """

  uplink: Compressor | None = None
  downlink: Compressor | None = None


class ClientConfig(NamedTuple):
  """Local training settings.

  Attributes:
    learning_rate: A float or an optax schedule over rounds.
    num_local_steps: Optimizer steps per round.
    batch_size: Examples per step.
    optimizer: "sgd", "momentum" or "adam".
    momentum: Momentum for optimizer="momentum".
    loss_fn: Per-example loss `(logits, labels) -> [batch]`.
    dp_sgd: Example-level differential privacy (DP-SGD) in every local
      step, or None to train without it.
    compression: Compression of the client's uplink and downlink messages.
  """

  learning_rate: float | Schedule = 0.1
  num_local_steps: int = 10
  batch_size: int = 32
  optimizer: str = "sgd"
  momentum: float = 0.9
  loss_fn: Callable[[jax.Array, jax.Array], jax.Array] = losses.cross_entropy
  dp_sgd: dp_sgd.DPSGDConfig | None = None
  compression: CompressionConfig = CompressionConfig()


class CohortConfig(NamedTuple):
  """Which clients train each round and how many are vmapped at once.

  Attributes:
    clients_per_round: Cohort size for "uniform"; slot capacity for
      "poisson" (use the number of clients for exact Poisson sampling).
    sampling: "uniform" (without replacement) or "poisson".
    poisson_rate: Inclusion probability for "poisson".
    clients_per_chunk: Clients vmapped together on each device; None for
      all of a device's slots at once.
    weighting: "example" (by num_examples) or "uniform" (every client with
      data counts once).
    mesh: A one-axis device mesh that splits the cohort's slots (see
      `fedjax_med.core.sharding.client_mesh`), or None for one device.
  """

  clients_per_round: int
  sampling: str = "uniform"
  poisson_rate: float | None = None
  clients_per_chunk: int | None = None
  weighting: str = "example"
  mesh: Mesh | None = None


def as_schedule(learning_rate: float | Schedule, name: str) -> Schedule:
  """Turns a float into a constant schedule, checking that it is positive."""
  if callable(learning_rate):
    return learning_rate
  if not learning_rate > 0:
    raise ValueError(
      f"{name}={learning_rate} must be positive; set it to a step size "
      "such as 0.1."
    )
  return optax.constant_schedule(float(learning_rate))


def make_client_optimizer(
  client: ClientConfig, learning_rate: jax.Array
) -> optax.GradientTransformation:
  """Builds the local optimizer with a (traced) learning rate."""
  if client.optimizer == "sgd":
    return optax.sgd(learning_rate)
  if client.optimizer == "momentum":
    return optax.sgd(learning_rate, momentum=client.momentum)
  if client.optimizer == "adam":
    return optax.adam(learning_rate)
  raise ValueError(
    f"client optimizer={client.optimizer!r} is unknown; use one of "
    f"{CLIENT_OPTIMIZERS}."
  )


def validate_client_config(client: ClientConfig) -> None:
  """Raises ValueError for settings that cannot train."""
  if client.optimizer not in CLIENT_OPTIMIZERS:
    raise ValueError(
      f"client optimizer={client.optimizer!r} is unknown; use one of "
      f"{CLIENT_OPTIMIZERS}."
    )
  if client.num_local_steps < 1:
    raise ValueError(
      f"num_local_steps={client.num_local_steps} must be at least 1."
    )
  if client.batch_size < 1:
    raise ValueError(f"batch_size={client.batch_size} must be at least 1.")
