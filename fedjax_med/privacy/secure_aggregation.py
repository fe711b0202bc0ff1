"""Secure aggregation with pairwise masks inside the compiled round.

Reference: K. Bonawitz, V. Ivanov, B. Kreuter, A. Marcedone, H. B. McMahan,
S. Patel, D. Ramage, A. Segal, K. Seth, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS 2017, IACR ePrint 2017/281.

`secure_aggregator` returns an `Aggregator` whose per-client step clips the
client's flattened delta to L2 norm `clip_norm`, adds the client's share of
Gaussian noise (distributed DP) and quantizes it into Z_{2^k}
(`ring_quantization`). It then masks the result (`masking`) with seeds that
the population agreed on the host with X25519 and HKDF before training
(`key_agreement.agree_population_seeds`). The cohort's sum of masked
`uint32` vectors wraps modulo 2^32, which is exact modular arithmetic. The
per-round step removes the self masks of the clients that sent, removes the
pairwise masks that dropped clients shared with them, and decodes the sum.
As in the paper, a cohort of K clients expands about K^2 masks of the
model's size per round.

How this departs from the paper, and why:
  * Key agreement runs once per population, not once per round. Every
    round folds its index into each seed's PRG key, so masks differ across
    rounds. In the paper each round has fresh keys, whereas here revealing
    a dropped client's seeds for one round would also reveal its masks for
    later rounds. `SecureAggregationSession` runs the per-round protocol
    exactly, with Shamir sharing of the keys, on the host.
  * Masks pair only clients that are both in the round's cohort, a set
    the server has. Clients outside the cohort play no part.
  * Shamir sharing and reconstruction run on the host only
    (`SecureAggregationSession`). Inside the round the server uses the
    agreed seeds of the dropped clients and the self-mask seeds of the
    survivors directly, which are the values the reconstruction returns.
  * Dropouts are simulated: each cohort member independently fails to send
    its masked input with probability `dropout_rate`. The round aborts
    (`apply_update` False) when fewer than `threshold` clients sent,
    because the server could not reconstruct the masks.
  * Clients are weighted uniformly. The round's example weights are not
    used, since weighting would need the weights summed securely too.

Distributed DP: each client adds Gaussian noise with standard deviation
`noise_multiplier * clip_norm / sqrt(expected_survivors)` to every
coordinate, where `expected_survivors = expected_cohort_size * (1 -
dropout_rate)`. The sum over the expected number of survivors then carries
noise of standard deviation `noise_multiplier * clip_norm` once. With `s`
survivors the realised standard deviation is `noise_multiplier * clip_norm
* sqrt(s / expected_survivors)`, logged as `secagg_noise_std` every round.
An accountant should use the realised multiplier
(`realised_noise_multiplier`). A multiplier fixed in advance follows from
the threshold, because every round that releases a nonempty sum has at
least `threshold` survivors. With noise the mean divides by
`expected_survivors` (a public constant) and the server steps even on an
empty cohort. Without noise it divides by the realised survivor count.

NOTE: The noise is continuous Gaussian added before quantization, not the
distributed discrete Gaussian of Kairouz, Liu and Steinke (ICML 2021,
arXiv:2102.06387). The Gaussian mechanism's guarantee therefore covers the
sum before each client's stochastic rounding and clamping, not the rounded
sum itself.

The per-client step needs to know which client it runs for and the round's
cohort, so `postprocess` takes `client_id` and `cohort` keyword arguments,
which the round must pass.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from fedjax_med.core.aggregation import Aggregator, Finalized
from fedjax_med.core.sampling import Cohort
from fedjax_med.privacy import key_agreement, masking, ring_quantization
from fedjax_med.privacy.key_agreement import PopulationSeeds


class SecureAggregationState(NamedTuple):
  """Aggregator state.

  Attributes:
    round: Rounds finalized so far, int32; folded into every mask seed.
  """

  round: jax.Array


def realised_noise_multiplier(
  noise_multiplier: float, survivors: int, expected_survivors: float
) -> float:
  """Noise multiplier of a sum over `survivors` clients' noise shares."""
  return noise_multiplier * math.sqrt(survivors / expected_survivors)


def _validate(
  num_clients,
  max_cohort_size,
  expected_cohort_size,
  clip_norm,
  threshold,
  dropout_rate,
  noise_multiplier,
  seeds,
):
  if not 1 <= max_cohort_size <= num_clients:
    raise ValueError(
      f"max_cohort_size={max_cohort_size} must be in [1, {num_clients}], the "
      "cohort's capacity within the population."
    )
  if not 0 < expected_cohort_size <= max_cohort_size:
    raise ValueError(
      f"expected_cohort_size={expected_cohort_size} must be in (0, "
      f"{max_cohort_size}]: clients_per_round for uniform sampling, "
      "poisson_rate * num_clients for Poisson sampling."
    )
  if not clip_norm > 0:
    raise ValueError(
      f"clip_norm={clip_norm} must be positive; it bounds each client's "
      "delta before quantization."
    )
  if threshold is not None and not 1 <= threshold <= max_cohort_size:
    raise ValueError(
      f"threshold={threshold} must be in [1, {max_cohort_size}]: a threshold "
      f"above the cohort of {max_cohort_size} clients can never be met. "
      "Lower it, or pass 0 or None for a majority of each round's cohort."
    )
  if not 0 <= dropout_rate < 1:
    raise ValueError(f"dropout_rate={dropout_rate} must be in [0, 1).")
  if noise_multiplier < 0:
    raise ValueError(
      f"noise_multiplier={noise_multiplier} must be non-negative; 0 turns "
      "distributed noise off."
    )
  expected_shape = (num_clients, num_clients, 2)
  if seeds is not None and seeds.pair_key_data.shape != expected_shape:
    raise ValueError(
      f"seeds cover {seeds.pair_key_data.shape[0]} clients but the "
      f"population has {num_clients}; agree seeds for the same population."
    )


def unmask_sum(
  received: jax.Array,
  sent: jax.Array,
  in_cohort: jax.Array,
  round_index: jax.Array,
  seeds: PopulationSeeds,
  max_cohort_size: int,
  ring_bits: int,
) -> jax.Array:
  """Removes the masks from the sum of the masked inputs the server received.

  Args:
    received: `uint32[num_values]`, the sum of the masked inputs that
      arrived, modulo 2^32.
    sent: `bool[num_clients]`, the clients whose masked input arrived.
    in_cohort: `bool[num_clients]`, the clients that shared keys this
      round (a superset of `sent`).
    round_index: The round folded into every seed.
    seeds: The population's seeds. The server uses the self-mask seeds of
      the senders and the pairwise seeds of the dropped clients, which are
      the values Shamir reconstruction returns in the protocol.
    max_cohort_size: Static bound on `in_cohort.sum()`.
    ring_bits: k.

  Returns:
    `uint32[num_values]`, the sum of the senders' quantized inputs modulo
    2^k.
  """
  pair_key_data = jnp.asarray(seeds.pair_key_data)
  self_key_data = jnp.asarray(seeds.self_key_data)
  # Cohort ids in slots; slots past the cohort's size are padding.
  cohort_size = jnp.sum(in_cohort.astype(jnp.int32))
  (ids,) = jnp.nonzero(in_cohort, size=max_cohort_size, fill_value=0)
  ids = ids.astype(jnp.int32)
  valid = jnp.arange(max_cohort_size) < cohort_size
  survived = valid & sent[ids]
  dropped = valid & ~sent[ids]
  num_values = received.shape[0]

  def remove_self_mask(total, slot):
    client_id, is_survivor = slot
    mask = masking.expand_seed(
      self_key_data[client_id], round_index, num_values
    )
    return jnp.where(is_survivor, total - mask, total), None

  def remove_dropped_pairs(total, slot):
    # Senders u added sign(u, v) PRG(s_uv) for the dropped client v; v's
    # own signed sum over them is the negation, so adding it cancels them.
    client_id, is_dropped = slot

    def recompute(total):
      return total + masking.pairwise_mask(
        client_id,
        ids,
        survived,
        pair_key_data[client_id, ids],
        round_index,
        num_values,
      )

    return jax.lax.cond(is_dropped, recompute, lambda t: t, total), None

  total, _ = jax.lax.scan(remove_self_mask, received, (ids, survived))
  total, _ = jax.lax.scan(remove_dropped_pairs, total, (ids, dropped))
  return masking.reduce_to_ring(total, ring_bits)


def secure_aggregator(
  num_clients: int,
  max_cohort_size: int,
  expected_cohort_size: float,
  *,
  clip_norm: float,
  ring_bits: int = 32,
  input_bits: int | None = None,
  threshold: int | None = None,
  dropout_rate: float = 0.0,
  noise_multiplier: float = 0.0,
  seeds: PopulationSeeds | None = None,
  dropout_seed: int = 0,
) -> Aggregator:
  """Builds the secure-aggregation `Aggregator` for a fixed population.

  Args:
    num_clients: Clients in the population (the data's client axis).
    max_cohort_size: The cohort's capacity (`clients_per_round`); the ring
      must hold the sum of this many inputs.
    expected_cohort_size: `clients_per_round` for uniform sampling,
      `poisson_rate * num_clients` for Poisson sampling.
    clip_norm: L2 bound on each client's flattened delta.
    ring_bits: k; sums live in Z_{2^k}, k at most 32.
    input_bits: Bits per client input; None picks the most that cannot
      overflow (`ring_quantization.plan_quantization`).
    threshold: Shamir threshold t: the round aborts when fewer than t
      clients send masked inputs. None or 0 uses a majority of each round's
      cohort, `cohort_size // 2 + 1`.
    dropout_rate: Probability that a cohort member drops after the key
      exchange and before sending its masked input.
    noise_multiplier: z; the sum carries Gaussian noise of standard
      deviation `z * clip_norm` when the expected number of clients
      survive. 0 adds none.
    seeds: Pairwise and self-mask seeds; None runs the X25519 key exchange
      for the whole population now.
    dropout_seed: Seeds the simulated dropouts.

  Returns:
    An `Aggregator` whose `postprocess` takes the keyword arguments
    `client_id` (scalar int) and `cohort` (the round's `Cohort`).

  Raises:
    ValueError: For a ring too small for `max_cohort_size`, a threshold
      above it, or invalid rates and norms.
  """
  threshold = threshold or None
  _validate(
    num_clients,
    max_cohort_size,
    expected_cohort_size,
    clip_norm,
    threshold,
    dropout_rate,
    noise_multiplier,
    seeds,
  )
  expected_survivors = expected_cohort_size * (1.0 - dropout_rate)
  client_noise_std = (
    noise_multiplier * clip_norm / math.sqrt(expected_survivors)
  )
  bound = clip_norm + ring_quantization.NOISE_TAIL_STDS * client_noise_std
  plan = ring_quantization.plan_quantization(
    ring_bits, max_cohort_size, bound, input_bits
  )
  if seeds is None:
    seeds = key_agreement.agree_population_seeds(num_clients)
  pair_key_data = jnp.asarray(seeds.pair_key_data)
  self_key_data = jnp.asarray(seeds.self_key_data)
  dropout_key = jax.random.key(dropout_seed)
  with_noise = noise_multiplier > 0

  def init(params):
    del params
    return SecureAggregationState(round=jnp.zeros((), jnp.int32))

  def postprocess(delta, weight, state, key, *, client_id, cohort):
    del weight  # Every client counts once.
    if client_id is None or not isinstance(cohort, Cohort):
      raise ValueError(
        "secure aggregation masks each input with the seeds its client "
        "shares with the rest of the cohort, so postprocess needs "
        "client_id=<scalar id> and cohort=<the round's Cohort>; pass them "
        "from the round."
      )
    flat, _ = ravel_pytree(delta)
    encoded = ring_quantization.encode_update(
      flat, key, plan, clip_norm, client_noise_std
    )
    masked = masking.mask_input(
      encoded,
      client_id,
      self_key_data[client_id],
      cohort.client_ids,
      cohort.mask,
      pair_key_data[client_id, cohort.client_ids],
      state.round,
      plan.ring_bits,
    )

    sent = jnp.ones((), bool)
    if dropout_rate > 0:
      round_key = jax.random.fold_in(dropout_key, state.round)
      client_key = jax.random.fold_in(round_key, client_id)
      sent = ~jax.random.bernoulli(client_key, dropout_rate)
    member = jnp.arange(num_clients) == client_id
    extra = {
      "masked_input": jnp.where(sent, masked, jnp.uint32(0)),
      "sent": (member & sent).astype(jnp.int32),
      "in_cohort": member.astype(jnp.int32),
    }
    return jax.tree.map(jnp.zeros_like, delta), jnp.zeros(()), extra

  def finalize(weighted_sum, weight_sum, extra_sum, cohort_size, state, key):
    del weight_sum, cohort_size, key
    zeros, unravel = ravel_pytree(weighted_sum)
    sent = extra_sum["sent"] > 0
    in_cohort = extra_sum["in_cohort"] > 0
    num_sent = jnp.sum(sent.astype(jnp.int32))
    num_cohort = jnp.sum(in_cohort.astype(jnp.int32))
    round_threshold = num_cohort // 2 + 1 if threshold is None else threshold
    aborted = (num_cohort > 0) & (num_sent < round_threshold)

    total = unmask_sum(
      extra_sum["masked_input"],
      sent,
      in_cohort,
      state.round,
      seeds,
      max_cohort_size,
      plan.ring_bits,
    )
    total_sum = ring_quantization.dequantize(total, plan)
    if with_noise:
      denominator = jnp.asarray(expected_survivors, jnp.float32)
      apply_update = ~aborted
    else:
      denominator = jnp.maximum(num_sent, 1).astype(jnp.float32)
      apply_update = ~aborted & (num_sent > 0)
    mean = jnp.where(apply_update, total_sum / denominator, 0.0)
    metrics = {
      "secagg_survivors": num_sent,
      "secagg_dropped": num_cohort - num_sent,
      "secagg_aborted": aborted.astype(jnp.int32),
      "secagg_noise_std": client_noise_std * jnp.sqrt(num_sent),
    }
    return Finalized(
      unravel(mean.astype(zeros.dtype)),
      apply_update,
      SecureAggregationState(round=state.round + 1),
      metrics,
    )

  return Aggregator(init, postprocess, finalize)
