"""Server optimizers from optax: FedAvgM, FedAdagrad, FedAdam, FedYogi.

References: S. J. Reddi, Z. Charles, M. Zaheer, Z. Garrett, K. Rush,
J. Konečný, S. Kumar, H. B. McMahan, "Adaptive Federated Optimization",
ICLR 2021, arXiv:2003.00295; T.-M. H. Hsu, H. Qi, M. Brown, "Measuring the
Effects of Non-Identical Data Distribution for Federated Visual
Classification", arXiv:1909.06335 (FedAvgM).

Clients run the FedAvg local update; the server treats the negated average
delta as a gradient and applies an optax optimizer to it. The optimizer acts
on "params" only; normalization statistics are averaged, never given Adam
moments.

Where this departs from the paper: the update rules are optax's
(`optax.adagrad`, `optax.adam`, `optax.yogi`, version 0.2.x), so Adam and
Yogi apply bias correction, which Reddi et al. omit, and the adaptivity
`tau` is optax's `eps` added to the square root of the second moment. The
defaults follow the paper: beta1 = 0.9, beta2 = 0.99, tau = 1e-3. The paper
averages deltas uniformly over the cohort; the default here weights by
`num_examples` (set weighting="uniform" to match the paper).
"""

from __future__ import annotations

import optax

from fedjax_med.algorithms.fedavg import (
  ClientConfig,
  CohortConfig,
  Schedule,
  as_schedule,
  build_fedavg_family,
)
from fedjax_med.core.aggregation import Aggregator
from fedjax_med.core.algorithm import FederatedAlgorithm
from fedjax_med.models.base import Model

SERVER_OPTIMIZERS = ("sgd", "momentum", "adagrad", "adam", "yogi")


def server_optimizer(
  name: str,
  learning_rate: float | Schedule,
  *,
  momentum: float = 0.9,
  b1: float = 0.9,
  b2: float = 0.99,
  tau: float = 1e-3,
) -> optax.GradientTransformation:
  """Builds the optax transformation a FedOpt server applies each round.

  Args:
    name: "sgd" (FedAvg), "momentum" (FedAvgM), "adagrad", "adam" or "yogi".
    learning_rate: Server learning rate, a float or a schedule over rounds.
    momentum: Heavy-ball momentum for "momentum".
    b1: First-moment decay for "adam" and "yogi".
    b2: Second-moment decay for "adam" and "yogi".
    tau: Adaptivity (eps) for "adagrad", "adam" and "yogi".
  """
  schedule = as_schedule(learning_rate, "server learning_rate")
  if name == "sgd":
    return optax.sgd(schedule)
  if name == "momentum":
    return optax.sgd(schedule, momentum=momentum)
  if name == "adagrad":
    return optax.adagrad(schedule, initial_accumulator_value=tau**2, eps=tau)
  if name == "adam":
    return optax.adam(schedule, b1=b1, b2=b2, eps=tau)
  if name == "yogi":
    return optax.yogi(schedule, b1=b1, b2=b2, eps=tau)
  raise ValueError(
    f"server optimizer={name!r} is unknown; use one of {SERVER_OPTIMIZERS}."
  )


def fedopt(
  model: Model,
  num_clients: int,
  *,
  server_optimizer_name: str,
  server_learning_rate: float | Schedule,
  client: ClientConfig,
  cohort: CohortConfig,
  momentum: float = 0.9,
  b1: float = 0.9,
  b2: float = 0.99,
  tau: float = 1e-3,
  aggregator: Aggregator | None = None,
  dataset_name: str = "the dataset",
) -> FederatedAlgorithm:
  """FedAvg local training with an optax server optimizer.

  `aggregator` replaces the weighted mean of the deltas.
  """
  optimizer = server_optimizer(
    server_optimizer_name,
    server_learning_rate,
    momentum=momentum,
    b1=b1,
    b2=b2,
    tau=tau,
  )
  return build_fedavg_family(
    model,
    num_clients,
    client=client,
    cohort=cohort,
    server_optimizer=optimizer,
    aggregator=aggregator,
    dataset_name=dataset_name,
  )
