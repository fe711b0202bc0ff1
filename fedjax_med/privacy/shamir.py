"""Shamir secret sharing over a prime field, on the host with Python ints.

Reference: A. Shamir, "How to Share a Secret", Communications of the ACM
22(11), 1979.

A secret `s` in the field GF(p) is the constant term of a random polynomial
`f` of degree `threshold - 1`. Share `i` is the point `(x_i, f(x_i))` with a
distinct nonzero `x_i`. Any `threshold` shares determine `f` and hence
`s = f(0)` by Lagrange interpolation. For any `threshold - 1` shares and any
candidate secret there is exactly one polynomial through them, so those
shares are uniformly distributed whatever the secret is, and they reveal
nothing about it.

The default field is GF(2^521 - 1), a Mersenne prime large enough to share a
32-byte X25519 private key or a 16-byte seed as one field element.
Coefficients come from the `secrets` module (the operating system's
cryptographic random source).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import NamedTuple

# 2^521 - 1 is prime (a Mersenne prime), so every nonzero element has an
# inverse and any 65-byte string fits in one field element.
MERSENNE_521 = 2**521 - 1


class Share(NamedTuple):
  """One point on the sharing polynomial.

  Attributes:
    x: The evaluation point, a nonzero field element (a client's index + 1
      in secure aggregation).
    y: The polynomial's value at `x`.
  """

  x: int
  y: int


def validate_threshold(threshold: int, num_shares: int) -> None:
  """Raises ValueError unless `1 <= threshold <= num_shares`."""
  if threshold < 1:
    raise ValueError(
      f"threshold={threshold} must be at least 1; use a majority such as "
      f"{num_shares // 2 + 1} of {num_shares}."
    )
  if threshold > num_shares:
    raise ValueError(
      f"threshold={threshold} exceeds the {num_shares} share holders, so the "
      f"secret could never be reconstructed; lower it to at most "
      f"{num_shares}."
    )


def evaluate_polynomial(coefficients: Sequence[int], x: int, prime: int) -> int:
  """Evaluates `sum_j coefficients[j] * x^j mod prime` by Horner's rule."""
  value = 0
  for coefficient in reversed(coefficients):
    value = (value * x + coefficient) % prime
  return value


def split(
  secret: int,
  threshold: int,
  num_shares: int,
  *,
  prime: int = MERSENNE_521,
  xs: Sequence[int] | None = None,
) -> list[Share]:
  """Splits `secret` into `num_shares` shares, any `threshold` of which
  reconstruct it.

  Args:
    secret: An integer in `[0, prime)`.
    threshold: Shares needed to reconstruct (the polynomial's degree + 1).
    num_shares: Shares to produce.
    prime: The field's modulus; must be prime and exceed `num_shares`.
    xs: Distinct nonzero evaluation points; defaults to `1..num_shares`.

  Returns:
    `num_shares` shares, in the order of `xs`.

  Raises:
    ValueError: For a secret outside the field, a threshold outside
      `[1, num_shares]`, or evaluation points that are zero or repeated.
  """
  validate_threshold(threshold, num_shares)
  if not 0 <= secret < prime:
    raise ValueError(
      f"secret has {secret.bit_length()} bits and does not fit in the field "
      f"of size {prime.bit_length()} bits; split it into smaller integers."
    )
  xs = list(range(1, num_shares + 1)) if xs is None else list(xs)
  if len(xs) != num_shares:
    raise ValueError(
      f"got {len(xs)} evaluation points for {num_shares} shares."
    )
  _check_points(xs, prime)
  coefficients = [secret] + [
    secrets.randbelow(prime) for _ in range(threshold - 1)
  ]
  return [Share(x, evaluate_polynomial(coefficients, x, prime)) for x in xs]


def reconstruct(
  shares: Sequence[Share], threshold: int, *, prime: int = MERSENNE_521
) -> int:
  """Recovers the secret `f(0)` from at least `threshold` shares.

  Uses the first `threshold` shares and Lagrange interpolation at zero:
  `f(0) = sum_i y_i prod_{j != i} x_j / (x_j - x_i) mod prime`.

  Raises:
    ValueError: If fewer than `threshold` shares are given or two shares
      have the same evaluation point.
  """
  if len(shares) < threshold:
    raise ValueError(
      f"got {len(shares)} shares but reconstruction needs threshold="
      f"{threshold}; collect shares from more clients."
    )
  points = list(shares)[:threshold]
  _check_points([share.x for share in points], prime)
  secret = 0
  for i, share_i in enumerate(points):
    numerator, denominator = 1, 1
    for j, share_j in enumerate(points):
      if i != j:
        numerator = numerator * share_j.x % prime
        denominator = denominator * (share_j.x - share_i.x) % prime
    basis = numerator * pow(denominator, -1, prime) % prime
    secret = (secret + share_i.y * basis) % prime
  return secret


def split_bytes(
  secret: bytes, threshold: int, num_shares: int, **kwargs
) -> list[Share]:
  """Splits a byte string (at most 65 bytes in the default field)."""
  return split(int.from_bytes(secret, "big"), threshold, num_shares, **kwargs)


def reconstruct_bytes(
  shares: Sequence[Share], threshold: int, length: int, **kwargs
) -> bytes:
  """Recovers a byte string of `length` bytes shared with `split_bytes`."""
  return reconstruct(shares, threshold, **kwargs).to_bytes(length, "big")


def _check_points(xs: Sequence[int], prime: int) -> None:
  if any(x % prime == 0 for x in xs):
    raise ValueError(
      "an evaluation point is zero modulo the prime, which would reveal the "
      "secret; use points 1..num_shares."
    )
  if len({x % prime for x in xs}) != len(xs):
    raise ValueError(
      f"evaluation points {sorted(xs)} repeat; each share needs its own point."
    )
