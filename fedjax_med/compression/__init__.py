"""Compression operators and exact byte counts of client messages."""

from fedjax_med.compression.operators import (
  error_feedback,
  identity,
  low_rank,
  qsgd,
  top_k,
)
from fedjax_med.compression.payload import (
  Compressor,
  PackedIntegers,
  payload_bytes,
)
from fedjax_med.compression.registry import COMPRESSORS, make_compressor
from fedjax_med.compression.rotation import rotated_quantization

__all__ = [
  "COMPRESSORS",
  "Compressor",
  "PackedIntegers",
  "error_feedback",
  "identity",
  "low_rank",
  "make_compressor",
  "payload_bytes",
  "qsgd",
  "rotated_quantization",
  "top_k",
]
