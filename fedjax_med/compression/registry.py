"""Builds compressors from config sections.

A section holds `name` and the operator's options:

  * "identity": no options.
  * "qsgd": `num_levels` (default 16).
  * "rotated_quantization": `num_levels` (default 16).
  * "top_k": `fraction` (default 0.1) or `k` (a positive integer; 0 or
    absent means use `fraction`).
  * "low_rank": `rank` (default 1).

Every operator also takes `error_feedback`. It defaults (when absent or
None) to True for the biased operators ("top_k", "low_rank"), which can
stall without it, and to False for the unbiased quantizers and "identity".
Options of the other operators are ignored, so one config section can list
them all and `name` can be switched on the command line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedjax_med.compression import operators, rotation
from fedjax_med.compression.payload import Compressor

COMPRESSORS = (
  "identity",
  "qsgd",
  "rotated_quantization",
  "top_k",
  "low_rank",
)
_OPTIONS = {
  "identity": (),
  "qsgd": ("num_levels",),
  "rotated_quantization": ("num_levels",),
  "top_k": ("fraction", "k"),
  "low_rank": ("rank",),
}
_BIASED = ("top_k", "low_rank")


def make_compressor(
  options: Mapping[str, Any], where: str = "compression"
) -> Compressor:
  """Returns the compressor that `options` (`name` plus options) describes.

  Args:
    options: A config section or dict with `name` and the operator's
      options.
    where: The section's config path, used in error messages.

  Raises:
    ValueError: For an unknown name or option, or an invalid option value.
  """
  if hasattr(options, "to_dict"):
    options = options.to_dict()
  options = dict(options)
  name = options.pop("name", "identity")
  if name not in COMPRESSORS:
    raise ValueError(
      f"{where}.name={name!r} is unknown; use one of {COMPRESSORS}."
    )
  use_feedback = options.pop("error_feedback", None)
  if use_feedback is None:
    use_feedback = name in _BIASED
  known = {option for names in _OPTIONS.values() for option in names}
  unknown = sorted(set(options) - known)
  if unknown:
    raise ValueError(
      f"{where} has unknown options {unknown}; the compressors take "
      f"{sorted(known) + ['error_feedback']}."
    )
  if name == "identity":
    compressor = operators.identity()
  elif name == "qsgd":
    compressor = operators.qsgd(options.get("num_levels", 16))
  elif name == "rotated_quantization":
    compressor = rotation.rotated_quantization(options.get("num_levels", 16))
  elif name == "top_k":
    k = options.get("k", 0) or None
    fraction = None if k is not None else options.get("fraction", 0.1)
    compressor = operators.top_k(k=k, fraction=fraction)
  else:
    compressor = operators.low_rank(options.get("rank", 1))
  if bool(use_feedback):
    compressor = operators.error_feedback(compressor)
  return compressor


def is_identity(options: Mapping[str, Any] | None) -> bool:
  """Whether a section selects no compression (absent or "identity")."""
  return options is None or options.get("name", "identity") == "identity"
