"""Evaluation metrics computed on the host."""

from fedjax_med.metrics.classification import (
  METRIC_NAMES,
  classification_metrics,
  evaluate_clients,
  expected_calibration_error,
  format_client_table,
)
from fedjax_med.metrics.long_tail import (
  evaluate_long_tail,
  format_long_tail_table,
  long_tail_metrics,
)

__all__ = [
  "METRIC_NAMES",
  "classification_metrics",
  "evaluate_clients",
  "evaluate_long_tail",
  "expected_calibration_error",
  "format_client_table",
  "format_long_tail_table",
  "long_tail_metrics",
]
