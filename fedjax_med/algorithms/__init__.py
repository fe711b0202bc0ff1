"""Federated algorithms, one module per method, each with a factory.

The modules share their method's name and hold its factory, e.g.
`fedjax_med.algorithms.fedprox.fedprox(...)`; `build_algorithm` builds any of
them from a config.
"""

from fedjax_med.algorithms import fedavg, fedopt, fedprox, scaffold
from fedjax_med.algorithms.fedavg import (
  ClientConfig,
  ClientHooks,
  CohortConfig,
  ServerState,
  build_fedavg_family,
)
from fedjax_med.algorithms.registry import ALGORITHM_NAMES, build_algorithm

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
]
