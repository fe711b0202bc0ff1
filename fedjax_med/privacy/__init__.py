"""Differential privacy, secure aggregation and leakage audits.

The audits live in `fedjax_med.privacy.audit`, which trains models through
the algorithm registry and so is not imported here.
"""

from fedjax_med.privacy.accounting import (
  PrivacyAccountant,
  PrivacySpec,
  compute_epsilon,
)
from fedjax_med.privacy.calibration import calibrate_noise_multiplier
from fedjax_med.privacy.clipping import (
  add_gaussian_noise,
  clip_by_global_norm,
  clip_per_layer,
  per_layer_sensitivity,
)
from fedjax_med.privacy.dp_aggregation import (
  AdaptiveClipConfig,
  dp_fedavg_aggregator,
)
from fedjax_med.privacy.dp_sgd import DPSGDConfig
from fedjax_med.privacy.secure_aggregation import secure_aggregator
from fedjax_med.privacy.secure_aggregation_session import (
  SecureAggregationSession,
)

__all__ = [
  "AdaptiveClipConfig",
  "DPSGDConfig",
  "PrivacyAccountant",
  "PrivacySpec",
  "SecureAggregationSession",
  "add_gaussian_noise",
  "calibrate_noise_multiplier",
  "clip_by_global_norm",
  "clip_per_layer",
  "compute_epsilon",
  "dp_fedavg_aggregator",
  "per_layer_sensitivity",
  "secure_aggregator",
]
