"""Leakage audits: gradient inversion and membership inference, with plots."""

from fedjax_med.privacy.audit.analytic import (
  analytic_dense_inversion,
  find_output_bias,
  recover_label,
)
from fedjax_med.privacy.audit.gradient_inversion import (
  InversionResult,
  batch_gradient,
  invert_update,
  one_hot_labels,
)
from fedjax_med.privacy.audit.membership_audit import (
  membership_audit,
  overfit_config,
  split_members,
)
from fedjax_med.privacy.audit.membership_inference import (
  example_losses,
  membership_inference_auc,
)
from fedjax_med.privacy.audit.plots import (
  plot_image_reconstructions,
  plot_record_reconstructions,
  plot_roc_curves,
)
from fedjax_med.privacy.audit.reconstruction import (
  match_reconstructions,
  reconstruction_error,
)
from fedjax_med.privacy.audit.runner import (
  AuditSetting,
  inversion_audit,
  run_audit,
)
from fedjax_med.privacy.audit.server_view import observed_update

__all__ = [
  "AuditSetting",
  "InversionResult",
  "analytic_dense_inversion",
  "batch_gradient",
  "example_losses",
  "find_output_bias",
  "inversion_audit",
  "invert_update",
  "match_reconstructions",
  "membership_audit",
  "membership_inference_auc",
  "observed_update",
  "one_hot_labels",
  "overfit_config",
  "plot_image_reconstructions",
  "plot_record_reconstructions",
  "plot_roc_curves",
  "reconstruction_error",
  "recover_label",
  "run_audit",
  "split_members",
]
