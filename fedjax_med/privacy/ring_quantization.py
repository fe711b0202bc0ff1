"""Fixed-point encoding of client updates into the ring Z_{2^k}.

A client's flattened delta is clipped to L2 norm `clip_norm` and optionally
given its share of Gaussian noise. Each coordinate is then clamped to
`[-bound, bound]`, scaled to `[-(2^(b-1) - 1), 2^(b-1) - 1]` and rounded
stochastically to an integer, which is written in two's complement modulo
2^k. Stochastic rounding (round up with probability equal to the
fractional part) is unbiased, so the decoded sum is an unbiased estimate of
the sum of the clipped, noised deltas.

The sum of `n` inputs in `[-2^(b-1), 2^(b-1))` lies in `[-n 2^(b-1),
n 2^(b-1))`, so it cannot wrap around the ring when `n * 2^b <= 2^k`.
`plan_quantization` picks the largest such `b` for the largest cohort (at
most 24, because float32 deltas carry a 24-bit significand and finer levels
would not be exact) or checks a given one. Decoding reads the ring sum in
two's complement and divides by the scale.

The clamping bound is `clip_norm` plus `NOISE_TAIL_STDS` standard
deviations of the per-client noise: an L2-clipped vector has every
coordinate in `[-clip_norm, clip_norm]`, and a Gaussian exceeds 6 standard
deviations with probability about 2e-9.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedjax_med.privacy.masking import MAX_RING_BITS, reduce_to_ring

MAX_INPUT_BITS = 24
NOISE_TAIL_STDS = 6.0


class QuantizationPlan(NamedTuple):
  """Mapping from real values to ring elements.

  Attributes:
    ring_bits: k; the ring is Z_{2^k}, held in `uint32`.
    input_bits: b; each client's integers lie in `[-2^(b-1), 2^(b-1))`.
    bound: Coordinates are clamped to `[-bound, bound]` before scaling.
    scale: Integer levels per unit, `(2^(b-1) - 1) / bound`.
  """

  ring_bits: int
  input_bits: int
  bound: float
  scale: float


def plan_quantization(
  ring_bits: int,
  max_cohort_size: int,
  bound: float,
  input_bits: int | None = None,
) -> QuantizationPlan:
  """Chooses the input precision so that a cohort's sum cannot wrap.

  Args:
    ring_bits: k, in `[2, 32]`.
    max_cohort_size: The most inputs that are ever summed (the cohort's
      capacity).
    bound: Largest magnitude of a coordinate, positive.
    input_bits: b; None picks `min(24, k - ceil(log2(max_cohort_size)))`.

  Returns:
    The plan.

  Raises:
    ValueError: If `max_cohort_size * 2^b > 2^k` (the sum could wrap), if
      fewer than 2 input bits remain, or for invalid arguments.
  """
  if not 2 <= ring_bits <= MAX_RING_BITS:
    raise ValueError(
      f"ring_bits={ring_bits} must be in [2, {MAX_RING_BITS}]; the ring "
      "Z_{2^k} is held in uint32."
    )
  if max_cohort_size < 1:
    raise ValueError(f"max_cohort_size={max_cohort_size} must be at least 1.")
  if not bound > 0:
    raise ValueError(
      f"bound={bound} must be positive; it is the clip norm plus the noise "
      "tail."
    )
  headroom = math.ceil(math.log2(max_cohort_size))
  largest = min(ring_bits - headroom, MAX_INPUT_BITS)
  if input_bits is None:
    input_bits = largest
  if input_bits > MAX_INPUT_BITS:
    raise ValueError(
      f"input_bits={input_bits} exceeds {MAX_INPUT_BITS}, the significand "
      "of float32 deltas; lower it or leave it unset."
    )
  if input_bits < 2 or max_cohort_size * 2**input_bits > 2**ring_bits:
    raise ValueError(
      f"ring_bits={ring_bits} is too small for a cohort of "
      f"{max_cohort_size} clients with {input_bits}-bit inputs: "
      f"{max_cohort_size} * 2^{input_bits} > 2^{ring_bits}, so the sum "
      "could wrap around the ring. Raise ring_bits (at most 32), lower the "
      "cohort size, or lower input_bits to at most "
      f"{ring_bits - headroom} (2 at the least)."
    )
  scale = (2 ** (input_bits - 1) - 1) / bound
  return QuantizationPlan(ring_bits, input_bits, float(bound), float(scale))


def clip_by_l2_norm(
  vector: jax.Array, clip_norm: float
) -> tuple[jax.Array, jax.Array]:
  """Scales `vector` down to L2 norm at most `clip_norm`.

  Returns:
    `(clipped, norm)`, where `norm` is the L2 norm before clipping.
  """
  norm = jnp.linalg.norm(vector)
  factor = jnp.minimum(1.0, clip_norm / jnp.maximum(norm, 1e-30))
  return vector * factor, norm


def stochastic_round(values: jax.Array, key: jax.Array) -> jax.Array:
  """Rounds each value up with probability equal to its fractional part."""
  floor = jnp.floor(values)
  uniform = jax.random.uniform(key, values.shape, values.dtype)
  return floor + (uniform < values - floor).astype(values.dtype)


def quantize(
  values: jax.Array, key: jax.Array, plan: QuantizationPlan
) -> jax.Array:
  """Encodes `float[num_values]` as ring elements, `uint32[num_values]`."""
  top = 2 ** (plan.input_bits - 1) - 1
  clamped = jnp.clip(values, -plan.bound, plan.bound)
  levels = stochastic_round(clamped * plan.scale, key)
  # float32 rounding of bound * scale can land one level above `top`.
  levels = jnp.clip(levels, -top, top).astype(jnp.int32)
  encoded = jax.lax.bitcast_convert_type(levels, jnp.uint32)
  return reduce_to_ring(encoded, plan.ring_bits)


def to_signed(ring_values: jax.Array, ring_bits: int) -> jax.Array:
  """Reads ring elements in two's complement, `uint32 -> int32`."""
  shift = MAX_RING_BITS - ring_bits
  shifted = jax.lax.shift_left(ring_values, jnp.uint32(shift))
  signed = jax.lax.bitcast_convert_type(shifted, jnp.int32)
  return jax.lax.shift_right_arithmetic(signed, jnp.int32(shift))


def dequantize(ring_values: jax.Array, plan: QuantizationPlan) -> jax.Array:
  """Decodes a ring element (one input or a sum of inputs) to float32."""
  signed = to_signed(
    reduce_to_ring(ring_values, plan.ring_bits), plan.ring_bits
  )
  return signed.astype(jnp.float32) / plan.scale


def encode_update(
  vector: jax.Array,
  key: jax.Array,
  plan: QuantizationPlan,
  clip_norm: float,
  noise_std: float = 0.0,
) -> jax.Array:
  """Clips, noises and quantizes one client's flattened update.

  Args:
    vector: `float32[num_values]`, the client's flattened delta.
    key: Randomness for the noise and the stochastic rounding.
    plan: The ring encoding.
    clip_norm: L2 bound applied before the noise.
    noise_std: Standard deviation of the Gaussian noise added to every
      coordinate after clipping; 0 adds none.

  Returns:
    `uint32[num_values]` in `[0, 2^k)`.
  """
  noise_key, rounding_key = jax.random.split(key)
  clipped, _ = clip_by_l2_norm(vector, clip_norm)
  if noise_std > 0:
    noise = jax.random.normal(noise_key, clipped.shape, clipped.dtype)
    clipped = clipped + noise_std * noise
  return quantize(clipped, rounding_key, plan)
