"""The round engine: cohort sampling, local training, chunked maps."""

from fedjax_med.core.aggregation import Aggregator, Finalized, weighted_mean
from fedjax_med.core.algorithm import FederatedAlgorithm
from fedjax_med.core.client import (
  ClientBatch,
  LocalResult,
  batch_indices,
  local_train,
)
from fedjax_med.core.engine import ClientOutput, map_cohort
from fedjax_med.core.sampling import (
  SAMPLING_METHODS,
  Cohort,
  make_sampler,
  sample_poisson,
  sample_uniform,
)
from fedjax_med.core.tree import (
  gather_rows,
  masked_sum,
  scatter_rows,
  stack_trees,
)

__all__ = [
  "Aggregator",
  "Finalized",
  "SAMPLING_METHODS",
  "ClientBatch",
  "ClientOutput",
  "Cohort",
  "FederatedAlgorithm",
  "LocalResult",
  "batch_indices",
  "gather_rows",
  "local_train",
  "make_sampler",
  "map_cohort",
  "masked_sum",
  "sample_poisson",
  "sample_uniform",
  "scatter_rows",
  "stack_trees",
  "weighted_mean",
]
