"""The compiled secure-aggregation `Aggregator` against plain quantized sums."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from optax import tree_utils as otu
from scipy import stats

from fedjax_med.core.engine import ClientOutput, map_cohort
from fedjax_med.core.sampling import Cohort
from fedjax_med.privacy import key_agreement as ka
from fedjax_med.privacy import masking
from fedjax_med.privacy import ring_quantization as rq
from fedjax_med.privacy.secure_aggregation import (
  secure_aggregator,
  unmask_sum,
)

NUM_CLIENTS = 8
SEEDS = ka.agree_population_seeds(NUM_CLIENTS)
KEY = jax.random.key(0)

_unmask = jax.jit(
  functools.partial(unmask_sum, seeds=SEEDS),
  static_argnames=("max_cohort_size", "ring_bits"),
)
_encode = jax.jit(rq.encode_update, static_argnames=("plan", "clip_norm"))


def _deltas(seed=0, scale=0.6):
  keys = jax.random.split(jax.random.key(seed), 2)
  return {
    "w": scale * jax.random.normal(keys[0], (NUM_CLIENTS, 3, 2)),
    "b": scale * jax.random.normal(keys[1], (NUM_CLIENTS, 5)),
  }


def _make_round(aggregator, traces=None):
  """One round the way the FedAvg round drives an aggregator."""

  def round_fn(state, deltas, cohort, key):
    if traces is not None:
      traces.append(1)

    def client_fn(client_id):
      delta = jax.tree.map(lambda leaf: leaf[client_id], deltas)
      out, weight, extra = aggregator.postprocess(
        delta,
        jnp.ones(()),
        state,
        jax.random.fold_in(key, client_id),
        client_id=client_id,
        cohort=cohort,
      )
      summed = {
        "weighted_delta": otu.tree_scale(weight, out),
        "weight": weight,
        "extra": extra,
        "plaintext_norm": otu.tree_norm(out),
      }
      return ClientOutput(summed, extra["masked_input"])

    summed, masked = map_cohort(client_fn, cohort, clients_per_chunk=3)
    finalized = aggregator.finalize(
      summed["weighted_delta"],
      summed["weight"],
      summed["extra"],
      jnp.sum(cohort.mask),
      state,
      key,
    )
    return finalized, summed, masked

  return jax.jit(round_fn)


def _plain_ring_sum(deltas, clients, key, plan, clip_norm=1.0):
  """The modular sum of the clients' quantized inputs, without masks."""
  total = jnp.zeros((11,), jnp.uint32)
  for u in clients:
    flat, _ = ravel_pytree(jax.tree.map(lambda leaf, u=u: leaf[u], deltas))
    encoded = _encode(
      flat, jax.random.fold_in(key, u), plan=plan, clip_norm=clip_norm
    )
    total = total + encoded
  return np.asarray(masking.reduce_to_ring(total, plan.ring_bits))


def _check_exact(finalized, summed, state, clients, deltas, key, plan):
  """Unmasks the server's received sum and compares it bit for bit."""
  extra = summed["extra"]
  ring_sum = _unmask(
    extra["masked_input"],
    extra["sent"] > 0,
    extra["in_cohort"] > 0,
    state.round,
    max_cohort_size=NUM_CLIENTS,  # Any bound on the cohort works.
    ring_bits=plan.ring_bits,
  )
  expected = _plain_ring_sum(deltas, clients, key, plan)
  np.testing.assert_array_equal(ring_sum, expected)
  mean, _ = ravel_pytree(finalized.mean_delta)
  decoded = rq.dequantize(expected, plan) / len(clients)
  np.testing.assert_allclose(mean, decoded, rtol=1e-6, atol=1e-7)


def _full_cohort(ids):
  ids = jnp.asarray(ids, jnp.int32)
  return Cohort(ids, jnp.ones(ids.shape, bool))


@pytest.mark.parametrize("ring_bits", [32, 16])
def test_decoded_sum_equals_plain_quantized_sum(ring_bits):
  aggregator = secure_aggregator(
    NUM_CLIENTS, 5, 5, clip_norm=1.0, ring_bits=ring_bits, seeds=SEEDS
  )
  plan = rq.plan_quantization(ring_bits, 5, 1.0)
  deltas = _deltas()
  cohort = _full_cohort([6, 1, 3, 0, 4])
  state = aggregator.init(None)
  finalized, summed, _ = _make_round(aggregator)(state, deltas, cohort, KEY)
  clients = [6, 1, 3, 0, 4]
  _check_exact(finalized, summed, state, clients, deltas, KEY, plan)
  assert bool(finalized.apply_update)
  # Nothing but zeros crosses the unmasked channel.
  assert float(summed["plaintext_norm"]) == 0.0
  assert float(summed["weight"]) == 0.0


def test_poisson_cohort_padding_slots_ignored():
  # Slots past the sampled clients are masked out; masks pair only the
  # sampled clients, so the sum stays exact.
  aggregator = secure_aggregator(
    NUM_CLIENTS, 6, 3.0, clip_norm=1.0, seeds=SEEDS
  )
  plan = rq.plan_quantization(32, 6, 1.0)
  deltas = _deltas(seed=1)
  cohort = Cohort(
    jnp.array([2, 5, 7, 0, 1, 3], jnp.int32),
    jnp.array([True, True, True, False, False, False]),
  )
  state = aggregator.init(None)
  finalized, summed, _ = _make_round(aggregator)(state, deltas, cohort, KEY)
  _check_exact(finalized, summed, state, [2, 5, 7], deltas, KEY, plan)


def test_dropouts_exact_over_survivors_or_abort():
  # Threshold 6 of 8 with a 40% dropout rate: some rounds keep enough
  # survivors and unmask exactly, the others abort without an update.
  aggregator = secure_aggregator(
    NUM_CLIENTS,
    8,
    8,
    clip_norm=1.0,
    threshold=6,
    dropout_rate=0.4,
    seeds=SEEDS,
  )
  plan = rq.plan_quantization(32, 8, 1.0)
  deltas = _deltas(seed=2)
  run_round = _make_round(aggregator)
  state = aggregator.init(None)
  outcomes = set()
  for r in range(8):
    key = jax.random.fold_in(KEY, r)
    finalized, summed, _ = run_round(state, deltas, _full_cohort(range(8)), key)
    survivors = np.flatnonzero(np.asarray(summed["extra"]["sent"]))
    assert int(finalized.metrics["secagg_survivors"]) == len(survivors)
    assert int(finalized.metrics["secagg_dropped"]) == 8 - len(survivors)
    if len(survivors) >= 6:
      outcomes.add("unmasked")
      assert bool(finalized.apply_update)
      _check_exact(finalized, summed, state, survivors, deltas, key, plan)
    else:
      outcomes.add("aborted")
      assert int(finalized.metrics["secagg_aborted"]) == 1
      assert not bool(finalized.apply_update)
    if 6 <= len(survivors) < 8:
      outcomes.add("unmasked with dropouts")
    state = finalized.state
  assert outcomes == {"unmasked", "unmasked with dropouts", "aborted"}


NOISE_MULTIPLIER, NOISE_CLIP_NORM = 0.8, 0.5


@functools.cache
def _noisy_round(dropout_rate):
  aggregator = secure_aggregator(
    NUM_CLIENTS,
    8,
    8,
    clip_norm=NOISE_CLIP_NORM,
    noise_multiplier=NOISE_MULTIPLIER,
    dropout_rate=dropout_rate,
    threshold=1,
    seeds=SEEDS,
    dropout_seed=1,
  )
  return aggregator, _make_round(aggregator)


@pytest.mark.parametrize("dropout_rate", [0.0, 0.25])
def test_distributed_noise_std_on_sum(dropout_rate):
  # Zero deltas: the decoded sum is the noise, whose std is z * C when the
  # expected number of clients survive, and z * C * sqrt(s / expected)
  # with s survivors.
  aggregator, run_round = _noisy_round(dropout_rate)
  deltas = {"w": jnp.zeros((NUM_CLIENTS, 20_000))}
  finalized, _, _ = run_round(
    aggregator.init(None), deltas, _full_cohort(range(8)), KEY
  )
  expected_survivors = 8 * (1 - dropout_rate)
  noisy_sum = np.asarray(finalized.mean_delta["w"]) * expected_survivors
  survivors = int(finalized.metrics["secagg_survivors"])
  realised = (
    NOISE_MULTIPLIER * NOISE_CLIP_NORM * np.sqrt(survivors / expected_survivors)
  )
  np.testing.assert_allclose(
    float(finalized.metrics["secagg_noise_std"]), realised, rtol=1e-5
  )
  np.testing.assert_allclose(noisy_sum.std(), realised, rtol=0.03)
  assert abs(noisy_sum.mean()) < 4 * realised / np.sqrt(noisy_sum.size)
  if dropout_rate == 0:
    np.testing.assert_allclose(noisy_sum.std(), 0.4, rtol=0.03)
  else:
    assert survivors < 8


def test_empty_cohort_with_noise_steps_with_zero_update():
  aggregator, run_round = _noisy_round(0.0)
  deltas = {"w": jnp.ones((NUM_CLIENTS, 20_000))}
  cohort = Cohort(jnp.arange(8, dtype=jnp.int32), jnp.zeros(8, bool))
  finalized, _, _ = run_round(aggregator.init(None), deltas, cohort, KEY)
  assert bool(finalized.apply_update)
  assert int(finalized.metrics["secagg_aborted"]) == 0
  assert int(finalized.metrics["secagg_survivors"]) == 0
  np.testing.assert_array_equal(finalized.mean_delta["w"], 0.0)


@pytest.fixture(scope="module")
def three_rounds():
  """Three compiled rounds on zero deltas, with a trace counter."""
  traces = []
  aggregator = secure_aggregator(NUM_CLIENTS, 4, 4, clip_norm=1.0, seeds=SEEDS)
  run_round = _make_round(aggregator, traces)
  deltas = {"w": jnp.zeros((NUM_CLIENTS, 4000))}
  state = aggregator.init(None)
  masked = []
  for ids in ([0, 1, 2, 3], [0, 1, 2, 3], [7, 2, 5, 4]):
    finalized, _, per_client = run_round(state, deltas, _full_cohort(ids), KEY)
    masked.append(np.asarray(per_client))
    state = finalized.state
  return traces, state, masked


def test_round_compiles_once(three_rounds):
  traces, state, _ = three_rounds
  assert len(traces) == 1
  assert int(state.round) == 3


def test_masked_inputs_uniform_in_ring(three_rounds):
  # The inputs are all zero, so everything the server receives is mask.
  # The masks come from freshly generated X25519 keys, so the draw changes
  # every run: a threshold of 1e-6 per check keeps false failures rare over
  # 8 checks, while a biased mask over 4 000 values gives p-values near 0.
  _, _, masked = three_rounds
  for row in masked[0]:
    assert stats.kstest(row / 2.0**32, "uniform").pvalue > 1e-6
    counts = np.bincount(row >> 28, minlength=16)
    assert stats.chisquare(counts).pvalue > 1e-6


def test_masks_change_across_rounds(three_rounds):
  # Same cohort, same inputs, next round: new masks.
  _, _, masked = three_rounds
  assert np.mean(masked[0] == masked[1]) < 0.01


def test_ring_too_small_for_cohort_raises():
  with pytest.raises(ValueError, match=r"ring_bits=8 .* 8 clients"):
    secure_aggregator(
      NUM_CLIENTS, 8, 8, clip_norm=1.0, ring_bits=8, input_bits=6, seeds=SEEDS
    )


def test_threshold_above_cohort_raises():
  with pytest.raises(ValueError, match="threshold=5 .* cohort of 4"):
    secure_aggregator(
      NUM_CLIENTS, 4, 4, clip_norm=1.0, threshold=5, seeds=SEEDS
    )


@pytest.mark.parametrize(
  "kwargs,match",
  [
    ({"clip_norm": 0.0}, "clip_norm=0.0"),
    ({"clip_norm": 1.0, "dropout_rate": 1.0}, "dropout_rate=1.0"),
    ({"clip_norm": 1.0, "noise_multiplier": -1.0}, "noise_multiplier=-1.0"),
  ],
)
def test_invalid_settings_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    secure_aggregator(NUM_CLIENTS, 4, 4, seeds=SEEDS, **kwargs)


def test_postprocess_without_client_id_raises():
  aggregator = secure_aggregator(NUM_CLIENTS, 4, 4, clip_norm=1.0, seeds=SEEDS)
  with pytest.raises(ValueError, match="client_id"):
    aggregator.postprocess(
      {"w": jnp.zeros(3)},
      jnp.ones(()),
      aggregator.init(None),
      KEY,
      client_id=None,
      cohort=None,
    )
