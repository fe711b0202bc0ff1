"""Serverless training: nodes on a graph that average by gossip.

`topology` builds graphs and their mixing matrices, `compressors` the
operators of compressed gossip, `gossip` the exact and compressed mixing
steps and the consensus distance, and `algorithms` D-PSGD and CHOCO-SGD.
"""

from fedjax_med.decentralized import algorithms, compressors, gossip, topology
from fedjax_med.decentralized.algorithms import (
  DecentralizedState,
  choco_sgd,
  dpsgd,
)
from fedjax_med.decentralized.gossip import consensus_distance, gossip_step
from fedjax_med.decentralized.topology import (
  Graph,
  make_graph,
  metropolis_hastings_weights,
  spectral_gap,
  validate_mixing_matrix,
)

__all__ = [
  "DecentralizedState",
  "Graph",
  "algorithms",
  "choco_sgd",
  "compressors",
  "consensus_distance",
  "dpsgd",
  "gossip",
  "gossip_step",
  "make_graph",
  "metropolis_hastings_weights",
  "spectral_gap",
  "topology",
  "validate_mixing_matrix",
]
