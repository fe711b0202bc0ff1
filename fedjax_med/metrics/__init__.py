"""Evaluation metrics computed on the host."""

from fedjax_med.metrics.classification import (
  METRIC_NAMES,
  classification_metrics,
  evaluate_clients,
  expected_calibration_error,
  format_client_table,
)

__all__ = [
  "METRIC_NAMES",
  "classification_metrics",
  "evaluate_clients",
  "expected_calibration_error",
  "format_client_table",
]
