"""Federated algorithms, one module per method, each a factory."""

from fedjax_med.algorithms.fedavg import (
  ClientConfig,
  ClientHooks,
  CohortConfig,
  ServerState,
  build_fedavg_family,
  fedavg,
)
from fedjax_med.algorithms.fedopt import fedopt, server_optimizer
from fedjax_med.algorithms.fedprox import fedprox
from fedjax_med.algorithms.registry import ALGORITHM_NAMES, build_algorithm
from fedjax_med.algorithms.scaffold import scaffold

__all__ = [
  "ALGORITHM_NAMES",
  "ClientConfig",
  "ClientHooks",
  "CohortConfig",
  "ServerState",
  "build_algorithm",
  "build_fedavg_family",
  "fedavg",
  "fedopt",
  "fedprox",
  "scaffold",
  "server_optimizer",
]
