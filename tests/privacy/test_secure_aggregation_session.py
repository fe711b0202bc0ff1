"""The host-side secure aggregation protocol: exact sums, dropouts, view."""

import numpy as np
import pytest
from scipy import stats

from fedjax_med.privacy import key_agreement as ka
from fedjax_med.privacy import masking
from fedjax_med.privacy.secure_aggregation_session import (
  SecureAggregationSession,
)

NUM_VALUES = 2000


def _inputs(num_clients, ring_bits, seed=0, small=False):
  rng = np.random.default_rng(seed)
  high = 16 if small else 2**ring_bits
  return {
    u: rng.integers(0, high, NUM_VALUES, dtype=np.uint64).astype(np.uint32)
    for u in range(num_clients)
  }


def _modular_sum(inputs, clients, ring_bits):
  total = np.zeros(NUM_VALUES, np.uint64)
  for u in clients:
    total += inputs[u]
  return (total % 2**ring_bits).astype(np.uint32)


@pytest.mark.parametrize("ring_bits", [32, 12])
def test_sum_exact_without_dropouts(ring_bits):
  inputs = _inputs(5, ring_bits)
  session = SecureAggregationSession(5, 3, ring_bits=ring_bits)
  aggregate = session.run(inputs)
  np.testing.assert_array_equal(
    aggregate, _modular_sum(inputs, range(5), ring_bits)
  )


@pytest.mark.parametrize(
  "before,after", [((1,), ()), ((), (2, 4)), ((0, 5), (3,))]
)
def test_sum_exact_over_senders_with_dropouts(before, after):
  inputs = _inputs(7, 32, seed=1)
  session = SecureAggregationSession(7, 4)
  aggregate = session.run(
    inputs, drop_before_input=before, drop_after_input=after
  )
  senders = [u for u in range(7) if u not in before]
  np.testing.assert_array_equal(aggregate, _modular_sum(inputs, senders, 32))


def test_server_view_holds_masked_inputs_and_sum_only():
  inputs = _inputs(6, 32, seed=2, small=True)
  session = SecureAggregationSession(6, 4)
  session.run(inputs, drop_before_input=(2,), drop_after_input=(5,))
  view = session.server_view

  assert sorted(view.masked_inputs) == [0, 1, 3, 4, 5]
  for u, masked in view.masked_inputs.items():
    assert np.mean(masked == inputs[u]) < 0.01
  np.testing.assert_array_equal(
    view.aggregate, _modular_sum(inputs, [0, 1, 3, 4, 5], 32)
  )
  # Shares of a mask key only for the client that sent nothing, shares of
  # a self-mask seed only for the senders: never both for one client.
  assert sorted(view.mask_key_shares) == [2]
  assert sorted(view.self_mask_shares) == [0, 1, 3, 4, 5]
  assert not set(view.mask_key_shares) & set(view.self_mask_shares)

  # No private key, seed or share appears in anything the server holds.
  received = b"".join(
    list(view.encrypted_shares.values())
    + list(view.mask_public_keys.values())
    + list(view.encryption_public_keys.values())
  )
  for u in range(6):
    client = session._clients[u]
    assert ka.private_bytes(client.mask_key) not in received
    assert ka.private_bytes(client.encryption_key) not in received
    assert client.self_mask_seed not in received
    for seed in session.pairwise_seeds(u).values():
      assert seed not in received
    for key_share, seed_share in client.held_shares.values():
      assert key_share.y.to_bytes(66, "big") not in received
      assert seed_share.y.to_bytes(66, "big") not in received


def test_masked_inputs_uniform_and_uncorrelated():
  ring_bits = 32
  inputs = _inputs(4, ring_bits, seed=3, small=True)
  session = SecureAggregationSession(4, 3)
  session.run(inputs)
  ring = float(2**ring_bits)
  for u, masked in session.server_view.masked_inputs.items():
    assert stats.kstest(masked / ring, "uniform").pvalue > 1e-3
    counts = np.bincount(masked >> (ring_bits - 4), minlength=16)
    assert stats.chisquare(counts).pvalue > 1e-3
    correlation = np.corrcoef(masked.astype(float), inputs[u])[0, 1]
    assert abs(correlation) < 5 / np.sqrt(NUM_VALUES)
  # The same tests reject the unmasked inputs.
  assert stats.kstest(inputs[0] / ring, "uniform").pvalue < 1e-6


@pytest.mark.parametrize(
  "before,after,step",
  [((0, 1, 2), (), "collect_masked_inputs"), ((0,), (1, 2), "unmask")],
)
def test_too_many_dropouts_raise(before, after, step):
  inputs = _inputs(5, 32)
  session = SecureAggregationSession(5, 3)
  with pytest.raises(ValueError, match=f"{step}, fewer than threshold=3"):
    session.run(inputs, drop_before_input=before, drop_after_input=after)


def test_threshold_above_clients_raises():
  with pytest.raises(ValueError, match="threshold=6 exceeds the 5"):
    SecureAggregationSession(5, 6)


def test_session_seeds_symmetric():
  session = SecureAggregationSession(3, 2)
  session.advertise_keys()
  session.share_keys()
  seeds = {u: session.pairwise_seeds(u) for u in range(3)}
  for u in range(3):
    assert sorted(seeds[u]) == [v for v in range(3) if v != u]
    for v, seed in seeds[u].items():
      assert seeds[v][u] == seed


def test_input_outside_ring_raises():
  session = SecureAggregationSession(3, 2, ring_bits=8)
  inputs = {u: np.full(4, 255, np.uint32) for u in range(3)}
  inputs[1][0] = 256
  with pytest.raises(ValueError, match="client 1's input"):
    session.run(inputs)


def test_pairwise_masks_cancel_in_ring():
  # The masks of all senders sum to their self masks only.
  seeds = ka.agree_population_seeds(4)
  ids = np.arange(4, dtype=np.int32)
  total = np.zeros(64, np.uint32)
  for u in range(4):
    total = total + np.asarray(
      masking.pairwise_mask(
        u, ids, np.ones(4, bool), seeds.pair_key_data[u], 3, 64
      )
    )
  np.testing.assert_array_equal(total, 0)
