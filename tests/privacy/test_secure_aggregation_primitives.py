"""Shamir sharing, X25519/HKDF seeds and ring quantization."""

import itertools
import secrets

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fedjax_med.privacy import key_agreement as ka
from fedjax_med.privacy import ring_quantization as rq
from fedjax_med.privacy import shamir

# Shamir sharing.


@pytest.mark.parametrize(
  "threshold,num_shares", [(1, 1), (2, 3), (3, 5), (5, 5)]
)
def test_shamir_any_threshold_subset_reconstructs(threshold, num_shares):
  secret = secrets.randbelow(shamir.MERSENNE_521)
  shares = shamir.split(secret, threshold, num_shares)
  for subset in itertools.combinations(shares, threshold):
    assert shamir.reconstruct(list(subset), threshold) == secret


def test_shamir_below_threshold_shares_fit_any_secret():
  # Through t - 1 shares and any candidate (0, s') passes exactly one
  # polynomial of degree t - 1; its value at the missing point differs for
  # each candidate, so the t - 1 shares rule no secret out.
  prime, threshold = 101, 3
  shares = shamir.split(42, threshold, 4, prime=prime)
  seen, missing = shares[: threshold - 1], shares[3]
  predictions = {}
  for candidate in range(prime):
    points = [(0, candidate)] + [(share.x, share.y) for share in seen]
    coefficients = _interpolate(points, prime)
    for share in seen:
      assert shamir.evaluate_polynomial(coefficients, share.x, prime) == share.y
    predictions[candidate] = shamir.evaluate_polynomial(
      coefficients, missing.x, prime
    )
  # The true secret's polynomial predicts the held-back share.
  assert predictions[42] == missing.y
  assert len(set(predictions.values())) == prime


@pytest.mark.parametrize("secret", [0, 7])
def test_shamir_single_share_uniform_whatever_secret(secret):
  # With t = 2 one share is uniform over GF(11) for every secret.
  prime, draws = 11, 3300
  counts = np.zeros(prime)
  for _ in range(draws):
    counts[shamir.split(secret, 2, 3, prime=prime)[0].y] += 1
  assert stats.chisquare(counts).pvalue > 1e-4


def test_shamir_bytes_round_trip_keeps_leading_zeros():
  secret = b"\x00\x00" + secrets.token_bytes(30)
  shares = shamir.split_bytes(secret, 3, 6)
  assert shamir.reconstruct_bytes(shares[2:5], 3, 32) == secret


def test_shamir_too_few_shares_raise():
  shares = shamir.split(5, 3, 5)
  with pytest.raises(ValueError, match="needs threshold=3"):
    shamir.reconstruct(shares[:2], 3)


@pytest.mark.parametrize("threshold", [0, 6])
def test_shamir_threshold_outside_range_raises(threshold):
  with pytest.raises(ValueError, match=f"threshold={threshold}"):
    shamir.split(5, threshold, 5)


def test_shamir_repeated_or_zero_points_raise():
  share = shamir.split(5, 2, 3)[0]
  with pytest.raises(ValueError, match="repeat"):
    shamir.reconstruct([share, share], 2)
  with pytest.raises(ValueError, match="zero"):
    shamir.split(5, 2, 2, xs=[0, 1])


def test_shamir_secret_outside_field_raises():
  with pytest.raises(ValueError, match="does not fit"):
    shamir.split(shamir.MERSENNE_521, 2, 3)


def _interpolate(points, prime):
  """Coefficients of the polynomial through `points` (x, y), low first."""
  coefficients = [0] * len(points)
  for i, (x_i, y_i) in enumerate(points):
    basis, denominator = [1], 1
    for j, (x_j, _) in enumerate(points):
      if i == j:
        continue
      basis = [
        (
          (basis[k - 1] if k > 0 else 0)
          - x_j * (basis[k] if k < len(basis) else 0)
        )
        % prime
        for k in range(len(basis) + 1)
      ]
      denominator = denominator * (x_i - x_j) % prime
    factor = y_i * pow(denominator, -1, prime) % prime
    for k, b in enumerate(basis):
      coefficients[k] = (coefficients[k] + factor * b) % prime
  return coefficients


# Key agreement.


def test_pairwise_seed_symmetric_and_distinct():
  keys = [ka.generate_private_key() for _ in range(4)]
  public = [ka.public_bytes(key) for key in keys]
  seeds = {}
  for u, v in itertools.permutations(range(4), 2):
    seeds[(u, v)] = ka.derive_shared_key(keys[u], public[v], u, v, 0)
  for u, v in itertools.combinations(range(4), 2):
    assert seeds[(u, v)] == seeds[(v, u)]
    assert len(seeds[(u, v)]) == ka.SEED_BYTES
  unordered = {seeds[(u, v)] for u, v in itertools.combinations(range(4), 2)}
  assert len(unordered) == 6


def test_pairwise_seed_differs_across_rounds_and_purposes():
  a, b = ka.generate_private_key(), ka.generate_private_key()
  round0 = ka.derive_shared_key(a, ka.public_bytes(b), 0, 1, 0)
  round1 = ka.derive_shared_key(a, ka.public_bytes(b), 0, 1, 1)
  encryption = ka.derive_shared_key(
    a, ka.public_bytes(b), 0, 1, 0, purpose=ka.ENCRYPTION_PURPOSE
  )
  assert round0 != round1
  assert round0 != encryption[: ka.SEED_BYTES]


def test_pairwise_seed_with_self_raises():
  key = ka.generate_private_key()
  with pytest.raises(ValueError, match="itself"):
    ka.derive_shared_key(key, ka.public_bytes(key), 3, 3, 0)


def test_population_seeds_symmetric_zero_diagonal():
  seeds = ka.agree_population_seeds(5)
  pair = seeds.pair_key_data
  assert pair.shape == (5, 5, 2)
  np.testing.assert_array_equal(pair, pair.transpose(1, 0, 2))
  np.testing.assert_array_equal(pair[np.arange(5), np.arange(5)], 0)
  off_diagonal = {
    tuple(pair[u, v]) for u, v in itertools.combinations(range(5), 2)
  }
  assert len(off_diagonal) == 10
  assert seeds.self_key_data.shape == (5, 2)


def test_seed_to_key_data_reads_big_endian_words():
  data = ka.seed_to_key_data(bytes(range(16)))
  np.testing.assert_array_equal(data, [0x00010203, 0x04050607])


# Ring quantization.


@pytest.mark.parametrize(
  "ring_bits,cohort,expected_bits",
  [(32, 4, 24), (16, 5, 13), (16, 8, 13), (8, 64, 2)],
)
def test_plan_picks_largest_safe_input_bits(ring_bits, cohort, expected_bits):
  plan = rq.plan_quantization(ring_bits, cohort, 1.0)
  assert plan.input_bits == expected_bits
  assert cohort * 2**plan.input_bits <= 2**ring_bits


def test_plan_overflow_names_bits_cohort_and_fix():
  with pytest.raises(ValueError, match=r"ring_bits=8 .* 65 clients") as error:
    rq.plan_quantization(8, 65, 1.0)
  assert "Raise ring_bits" in str(error.value)
  with pytest.raises(ValueError, match="could wrap"):
    rq.plan_quantization(16, 4, 1.0, input_bits=15)


def test_to_signed_reads_twos_complement():
  values = jnp.array([0, 1, 127, 128, 255], jnp.uint32)
  np.testing.assert_array_equal(rq.to_signed(values, 8), [0, 1, 127, -128, -1])
  full = jnp.array([2**31, 2**32 - 1], jnp.uint32)
  np.testing.assert_array_equal(rq.to_signed(full, 32), [-(2**31), -1])


def test_stochastic_rounding_unbiased():
  values = jnp.full((200_000,), 2.3, jnp.float32)
  rounded = rq.stochastic_round(values, jax.random.key(0))
  assert set(np.unique(rounded)) == {2.0, 3.0}
  standard_error = np.sqrt(0.3 * 0.7 / values.size)
  assert abs(float(rounded.mean()) - 2.3) < 5 * standard_error


def test_quantize_round_trip_within_one_level():
  plan = rq.plan_quantization(16, 4, 1.0)
  values = jax.random.uniform(jax.random.key(1), (1000,), minval=-1, maxval=1)
  decoded = rq.dequantize(rq.quantize(values, jax.random.key(2), plan), plan)
  assert float(jnp.max(jnp.abs(decoded - values))) <= 1 / plan.scale + 1e-6


def test_full_cohort_at_bounds_sums_without_wrapping():
  # The tightest case n * 2^b == 2^k: n inputs all at +bound, then -bound.
  plan = rq.plan_quantization(12, 8, 1.0)
  assert 8 * 2**plan.input_bits == 2**12
  for sign in (1.0, -1.0):
    encoded = rq.quantize(
      jnp.full((8, 3), sign, jnp.float32), jax.random.key(0), plan
    )
    total = jnp.sum(encoded, axis=0, dtype=jnp.uint32)
    np.testing.assert_allclose(rq.dequantize(total, plan), 8 * sign, rtol=1e-6)


def test_encode_update_clips_to_norm():
  plan = rq.plan_quantization(32, 4, 1.0)
  vector = jnp.array([3.0, 4.0])
  decoded = rq.dequantize(
    rq.encode_update(vector, jax.random.key(0), plan, 1.0), plan
  )
  np.testing.assert_allclose(decoded, [0.6, 0.8], atol=2 / plan.scale)
