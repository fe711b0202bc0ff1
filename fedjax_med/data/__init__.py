"""Federated datasets: stacked client arrays, partitioners and sources."""

from fedjax_med.data.federated_data import (
  ClientArrays,
  FederatedData,
  stack_clients,
)
from fedjax_med.data.heart_disease import load_fed_heart_disease
from fedjax_med.data.partition import (
  dirichlet_partition,
  federate,
  iid_partition,
  natural_partition,
  partition_summary,
  quantity_skew_partition,
)
from fedjax_med.data.registry import DATASET_NAMES, load_dataset
from fedjax_med.data.sklearn_sources import (
  ArraySource,
  load_breast_cancer_arrays,
  load_digits_arrays,
)
from fedjax_med.data.splits import check_patient_ids, train_test_indices
from fedjax_med.data.standardize import (
  FeatureStatistics,
  aggregate_feature_statistics,
  feature_statistics,
  standardize_clients,
)
from fedjax_med.data.tfds_io import read_tfds, write_tfds

__all__ = [
  "DATASET_NAMES",
  "ArraySource",
  "ClientArrays",
  "FeatureStatistics",
  "FederatedData",
  "aggregate_feature_statistics",
  "check_patient_ids",
  "dirichlet_partition",
  "feature_statistics",
  "federate",
  "iid_partition",
  "load_breast_cancer_arrays",
  "load_dataset",
  "load_digits_arrays",
  "load_fed_heart_disease",
  "natural_partition",
  "partition_summary",
  "quantity_skew_partition",
  "read_tfds",
  "stack_clients",
  "standardize_clients",
  "train_test_indices",
  "write_tfds",
]
