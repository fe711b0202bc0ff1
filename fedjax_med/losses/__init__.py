"""Losses usable by any algorithm."""

from fedjax_med.losses.classification import (
  cross_entropy,
  masked_mean,
  probabilities,
)

__all__ = ["cross_entropy", "masked_mean", "probabilities"]
