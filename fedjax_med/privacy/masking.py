"""Pairwise and self masks in the ring Z_{2^k}, usable inside `jit`.

Client `u` of a cohort hides its quantized input `x_u` as

  y_u = x_u + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)
        (mod 2^k),

where `v` runs over the other clients that shared keys in the round, `s_uv`
is the pairwise seed agreed by `u` and `v`, and `b_u` is `u`'s self-mask
seed. Over any set of clients that all send, the pairwise terms cancel in
pairs, so the sum of the `y_u` is the sum of the `x_u` plus the self masks,
which the server removes after reconstructing the `b_u`.

The PRG is JAX's threefry2x32 in counter mode: `jax.random.bits` of the
seed's key with the round index folded in. Every value is a `uint32`, whose
arithmetic wraps modulo 2^32; reducing modulo 2^k at the end (k <= 32) gives
the same result as working modulo 2^k throughout because 2^k divides 2^32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MAX_RING_BITS = 32


def reduce_to_ring(values: jax.Array, ring_bits: int) -> jax.Array:
  """Reduces `uint32` values modulo `2**ring_bits`."""
  if ring_bits == MAX_RING_BITS:
    return values
  return values & jnp.uint32(2**ring_bits - 1)


def expand_seed(
  key_data: jax.Array, round_index: jax.Array, num_values: int
) -> jax.Array:
  """Expands one seed into `uint32[num_values]` pseudorandom values.

  Args:
    key_data: `uint32[2]`, threefry2x32 key data made from the seed.
    round_index: Scalar folded into the key, so each round has new masks.
    num_values: Length of the mask.

  Returns:
    Uniform `uint32[num_values]`; reduce them modulo 2^k for a k-bit ring.
  """
  key = jax.random.wrap_key_data(
    jnp.asarray(key_data, jnp.uint32), impl="threefry2x32"
  )
  key = jax.random.fold_in(key, round_index)
  return jax.random.bits(key, (num_values,), jnp.uint32)


def pairwise_mask(
  client_id: jax.Array,
  partner_ids: jax.Array,
  partner_valid: jax.Array,
  partner_key_data: jax.Array,
  round_index: jax.Array,
  num_values: int,
) -> jax.Array:
  """Sums client `u`'s signed pairwise masks over its partners.

  Args:
    client_id: Scalar id `u`.
    partner_ids: `int32[num_partners]`, candidate partner ids `v`.
    partner_valid: `bool[num_partners]`; False entries (padding, `u`
      itself) add nothing.
    partner_key_data: `uint32[num_partners, 2]`, key data of `s_uv`.
    round_index: Scalar round index.
    num_values: Length of the mask.

  Returns:
    `uint32[num_values]`: `sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)`
    modulo 2^32, over the valid partners. A scan over partners keeps the
    memory at one mask.
  """

  def add_partner(total, partner):
    partner_id, valid, key_data = partner
    bits = expand_seed(key_data, round_index, num_values)
    signed = jnp.where(partner_id > client_id, total + bits, total - bits)
    return jnp.where(valid, signed, total), None

  total, _ = jax.lax.scan(
    add_partner,
    jnp.zeros((num_values,), jnp.uint32),
    (partner_ids, partner_valid & (partner_ids != client_id), partner_key_data),
  )
  return total


def mask_input(
  encoded: jax.Array,
  client_id: jax.Array,
  self_key_data: jax.Array,
  partner_ids: jax.Array,
  partner_valid: jax.Array,
  partner_key_data: jax.Array,
  round_index: jax.Array,
  ring_bits: int,
) -> jax.Array:
  """Adds the self mask and the pairwise masks to a quantized input.

  Args:
    encoded: `uint32[num_values]`, the client's input in Z_{2^k}.
    client_id: Scalar id `u`.
    self_key_data: `uint32[2]`, key data of `b_u`.
    partner_ids: `int32[num_partners]`, the other clients that shared keys.
    partner_valid: `bool[num_partners]`, False for padding.
    partner_key_data: `uint32[num_partners, 2]`, key data of each `s_uv`.
    round_index: Scalar round index.
    ring_bits: k, at most 32.

  Returns:
    The masked input `y_u`, `uint32[num_values]` in `[0, 2^k)`.
  """
  num_values = encoded.shape[0]
  self_mask = expand_seed(self_key_data, round_index, num_values)
  pair_mask = pairwise_mask(
    client_id,
    partner_ids,
    partner_valid,
    partner_key_data,
    round_index,
    num_values,
  )
  return reduce_to_ring(encoded + self_mask + pair_mask, ring_bits)
