"""Losses usable by any algorithm."""

from fedjax_med.losses.asymmetric_pade import PadeCoefficients, alpa_loss
from fedjax_med.losses.class_statistics import (
  client_label_histograms,
  global_class_counts,
  tail_classes,
  tail_mask,
)
from fedjax_med.losses.classification import (
  cross_entropy,
  masked_mean,
  probabilities,
)
from fedjax_med.losses.long_tail import (
  balanced_softmax_loss,
  class_balanced_loss,
  class_balanced_weights,
  focal_loss,
  logit_adjusted_loss,
)
from fedjax_med.losses.registry import LOSS_NAMES, make_loss

__all__ = [
  "LOSS_NAMES",
  "PadeCoefficients",
  "alpa_loss",
  "balanced_softmax_loss",
  "class_balanced_loss",
  "class_balanced_weights",
  "client_label_histograms",
  "cross_entropy",
  "focal_loss",
  "global_class_counts",
  "logit_adjusted_loss",
  "make_loss",
  "masked_mean",
  "probabilities",
  "tail_classes",
  "tail_mask",
]
