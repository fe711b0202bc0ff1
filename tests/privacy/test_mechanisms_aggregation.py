"""DP-FedAvg aggregator: public denominator, noise scale, adaptive clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med import losses
from fedjax_med.algorithms import fedavg as fedavg_lib
from fedjax_med.privacy import dp_aggregation
from tests import toy

KEY = jax.random.PRNGKey(0)


def _finalize_many(aggregator, weighted_sum, extra_sum, weight_sum, draws):
  """Runs `finalize` with `draws` keys on the same cohort sums."""
  state = aggregator.init(weighted_sum)

  def one(key):
    return aggregator.finalize(
      weighted_sum, weight_sum, extra_sum, jnp.asarray(0), state, key
    )

  return jax.lax.map(one, jax.random.split(KEY, draws), batch_size=256)


def _zero_extra():
  return {"unclipped_centered": jnp.zeros(()), "clipped": jnp.zeros(())}


def test_update_noise_stddev_is_z_c_over_m():
  # 64 clients whose clipped deltas are all zero: the update is pure noise
  # of std z * C on the sum and z * C / 64 after the division.
  aggregator = dp_aggregation.dp_fedavg_aggregator(1.0, 1.1, 64.0)
  zeros = {"w": jnp.zeros((1000,))}
  out = _finalize_many(
    aggregator, zeros, _zero_extra(), jnp.asarray(64.0), 4096
  )
  update_std = float(np.std(out.mean_delta["w"]))
  np.testing.assert_allclose(update_std * 64, 1.1, rtol=0.03)
  np.testing.assert_allclose(update_std, 1.1 / 64, rtol=0.03)
  # Dividing the noise by sqrt(64) instead of 64 would give 0.1375.
  assert abs(update_std - 0.1375) > 0.1
  np.testing.assert_allclose(out.metrics["noise_stddev"], 1.1, rtol=1e-6)
  assert bool(np.all(out.apply_update))


def test_empty_cohort_gives_noise_only_update():
  # Poisson rate 0.3 over 20 clients: m = 6, and no client took part.
  m = dp_aggregation.expected_cohort_size("poisson", 20, 20, 0.3)
  assert m == pytest.approx(6.0)
  aggregator = dp_aggregation.dp_fedavg_aggregator(2.0, 0.8, m)
  zeros = {"w": jnp.zeros((500,)), "b": jnp.zeros((3,))}
  out = _finalize_many(aggregator, zeros, _zero_extra(), jnp.asarray(0.0), 512)
  assert bool(np.all(out.apply_update))
  for leaf in jax.tree.leaves(out.mean_delta):
    assert np.all(np.isfinite(leaf))
  std = float(np.std(out.mean_delta["w"]))
  np.testing.assert_allclose(std, 0.8 * 2.0 / 6.0, rtol=0.03)
  assert float(np.max(out.metrics["clipped_fraction"])) == 0.0


def _constant_cohort_round(rate=0.3, noise_multiplier=0.0, num_clients=20):
  """Clients that all hold target 1: each delta is the same 2 * lr."""
  data = toy.quadratic_data([1] * num_clients, [5] * num_clients)
  aggregator = dp_aggregation.dp_fedavg_aggregator(
    100.0, noise_multiplier, rate * num_clients
  )
  algorithm = fedavg_lib.fedavg(
    toy.scalar_model(),
    num_clients,
    client=fedavg_lib.ClientConfig(
      learning_rate=0.1,
      num_local_steps=1,
      batch_size=5,
      loss_fn=toy.squared_error,
    ),
    cohort=fedavg_lib.CohortConfig(
      clients_per_round=num_clients,
      sampling="poisson",
      poisson_rate=rate,
      weighting="uniform",
    ),
    aggregator=aggregator,
  )
  state = algorithm.init(KEY, {"params": {"w": jnp.zeros(())}})
  return algorithm, state, data


def test_round_divides_by_expected_not_realised_cohort():
  # Each client's delta is 2 * 0.1 * (1 - 0) = 0.2, so with a public
  # denominator q * N = 6 a cohort of K clients moves w by 0.2 * K / 6.
  algorithm, state, data = _constant_cohort_round()
  run_round = jax.jit(algorithm.run_round)
  seen = {}
  for r in range(400):
    new_state, metrics = run_round(state, data, jax.random.fold_in(KEY, r))
    size = int(metrics["cohort_size"])
    seen[size] = float(new_state.params["w"])
    if 3 in seen and 11 in seen:
      break
  assert 3 in seen, sorted(seen)
  assert 11 in seen, sorted(seen)
  for size, w in seen.items():
    np.testing.assert_allclose(w, 0.2 * size / 6.0, rtol=1e-5, atol=1e-7)


def test_round_steps_on_empty_cohort():
  algorithm, state, data = _constant_cohort_round(0.02, noise_multiplier=0.01)
  run_round = jax.jit(algorithm.run_round)
  for r in range(200):
    new_state, metrics = run_round(state, data, jax.random.fold_in(KEY, r))
    if int(metrics["cohort_size"]) == 0:
      break
  else:
    pytest.fail("no empty cohort in 200 draws at rate 0.02")
  w = float(new_state.params["w"])
  assert np.isfinite(w)
  # The server stepped on pure noise: std 0.01 * 100 / 0.4 = 2.5.
  assert w != 0.0
  assert int(new_state.round) == 1


def test_unclipped_count_noise_and_split():
  # sigma_b = 3 on a count over m = 40 clients, half of them clipped.
  config = dp_aggregation.AdaptiveClipConfig(0.5, 0.2, clipped_count_stddev=3.0)
  aggregator = dp_aggregation.dp_fedavg_aggregator(1.0, 1.0, 40.0, config)
  z_delta = dp_aggregation.delta_noise_multiplier(1.0, 3.0)
  np.testing.assert_allclose(z_delta, (1.0 - 1.0 / 36.0) ** -0.5, rtol=1e-12)
  # The deltas and the count together have multiplier z = 1.
  combined = (z_delta**-2 + (2 * 3.0) ** -2) ** -0.5
  np.testing.assert_allclose(combined, 1.0, rtol=1e-12)

  # 30 of 40 unclipped: centered sum 30 * 0.5 - 10 * 0.5 = 10.
  extra = {
    "unclipped_centered": jnp.asarray(10.0),
    "clipped": jnp.asarray(10.0),
  }
  zeros = {"w": jnp.zeros((4,))}
  out = _finalize_many(aggregator, zeros, extra, jnp.asarray(40.0), 4096)
  estimate = np.asarray(out.metrics["unclipped_fraction_estimate"])
  np.testing.assert_allclose(np.mean(estimate), 0.75, atol=0.005)
  np.testing.assert_allclose(np.std(estimate), 3.0 / 40.0, rtol=0.05)
  np.testing.assert_allclose(out.metrics["noise_stddev"], z_delta, rtol=1e-6)
  np.testing.assert_allclose(out.metrics["clipped_fraction"], 0.25)
  # More clients unclipped than the target: the clip norm shrinks.
  expected = np.exp(-0.2 * (np.clip(estimate, 0, 1) - 0.5))
  np.testing.assert_allclose(out.state.clip_norm, expected, rtol=1e-5)


def test_default_count_stddev_keeps_small_cohorts_valid():
  assert dp_aggregation.default_clipped_count_stddev(1.1, 100.0) == 5.0
  assert dp_aggregation.default_clipped_count_stddev(1.1, 6.0) == 1.1
  assert dp_aggregation.default_clipped_count_stddev(0.0, 6.0) == 0.0
  z_delta = dp_aggregation.delta_noise_multiplier(1.1, 1.1)
  np.testing.assert_allclose(z_delta, 1.1 / np.sqrt(0.75), rtol=1e-12)


def test_count_stddev_too_small_raises():
  with pytest.raises(ValueError, match="clipped_count_stddev=0.5 is too small"):
    dp_aggregation.dp_fedavg_aggregator(
      1.0,
      1.0,
      10.0,
      dp_aggregation.AdaptiveClipConfig(clipped_count_stddev=0.5),
    )


@pytest.mark.parametrize("quantile", [0.2, 0.5, 0.9])
def test_adaptive_clip_converges_to_quantile(quantile):
  # 100 clients with delta norms 1, 2, ..., 100 and no noise: the clip norm
  # settles where the fraction of unclipped norms is the target.
  norms = jnp.arange(1.0, 101.0)
  deltas = {"w": jnp.stack([norms, jnp.zeros(100)], axis=1)}
  config = dp_aggregation.AdaptiveClipConfig(quantile, 0.2)
  aggregator = dp_aggregation.dp_fedavg_aggregator(5.0, 0.0, 100.0, config)

  @jax.jit
  def one_round(state, key):
    def postprocess(delta, weight, client_id):
      return aggregator.postprocess(
        delta, weight, state, key, client_id=client_id, cohort=None
      )

    clipped, weight, extra = jax.vmap(postprocess)(
      deltas, jnp.ones(100), jnp.arange(100)
    )
    total = jax.tree.map(lambda x: jnp.sum(x, axis=0), clipped)
    extra_sum = jax.tree.map(lambda x: jnp.sum(x, axis=0), extra)
    finalized = aggregator.finalize(
      total, jnp.sum(weight), extra_sum, jnp.asarray(100), state, key
    )
    return finalized.state, finalized.metrics

  state = aggregator.init(None)
  history = []
  for r in range(300):
    state, metrics = one_round(state, jax.random.fold_in(KEY, r))
    history.append(float(metrics["clip_norm"]))
  tail = np.asarray(history[-50:])
  unclipped = np.mean(np.asarray(norms)[None, :] <= tail[:, None], axis=1)
  np.testing.assert_allclose(np.mean(unclipped), quantile, atol=0.02)
  np.testing.assert_allclose(np.median(tail), 100 * quantile, rtol=0.06)


def test_dp_round_compiles_once_and_repeats_bits():
  data = toy.random_binary_data([12, 7, 20, 15, 9, 11])
  model = toy.logistic_model()
  variables = model.init(KEY, jnp.zeros((1, 5)))
  aggregator = dp_aggregation.dp_fedavg_aggregator(
    0.5, 1.0, 3.0, dp_aggregation.AdaptiveClipConfig()
  )
  algorithm = fedavg_lib.fedavg(
    model,
    6,
    client=fedavg_lib.ClientConfig(
      learning_rate=0.2,
      num_local_steps=2,
      batch_size=4,
      loss_fn=losses.cross_entropy,
    ),
    cohort=fedavg_lib.CohortConfig(
      clients_per_round=6,
      sampling="poisson",
      poisson_rate=0.5,
      clients_per_chunk=2,
      weighting="uniform",
    ),
    aggregator=aggregator,
  )
  traces = []

  def counted(state, data, key):
    traces.append(1)
    return algorithm.run_round(state, data, key)

  def run(seed):
    run_round = jax.jit(counted)
    state = algorithm.init(KEY, variables)
    clip_norms = []
    for r in range(4):
      key = jax.random.fold_in(jax.random.PRNGKey(seed), r)
      state, metrics = run_round(state, data, key)
      clip_norms.append(float(metrics["clip_norm"]))
    return state, clip_norms

  first, clip_norms = run(0)
  assert len(traces) == 1
  assert len(set(clip_norms)) > 1  # The clip norm adapted across rounds.
  second, _ = run(0)
  jax.tree.map(np.testing.assert_array_equal, first, second)
  other, _ = run(1)
  assert not np.array_equal(
    first.params["Dense_0"]["kernel"], other.params["Dense_0"]["kernel"]
  )


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(expected_cohort_size=0.0), "expected_cohort_size=0.0"),
    (
      dict(adaptive=dp_aggregation.AdaptiveClipConfig(1.5)),
      "target_unclipped_quantile=1.5",
    ),
    (
      dict(adaptive=dp_aggregation.AdaptiveClipConfig(0.5, 0.0)),
      "clip_learning_rate=0.0",
    ),
    (dict(clip_norm=0.0), "clip_norm=0.0"),
  ],
)
def test_aggregator_rejects_bad_settings(kwargs, message):
  args = dict(clip_norm=1.0, noise_multiplier=1.0, expected_cohort_size=5.0)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    dp_aggregation.dp_fedavg_aggregator(**args)


def test_expected_cohort_size_by_sampling():
  assert dp_aggregation.expected_cohort_size("uniform", 50, 8, None) == 8.0
  assert dp_aggregation.expected_cohort_size(
    "poisson", 50, 50, 0.1
  ) == pytest.approx(5.0)
  with pytest.raises(ValueError, match="poisson_rate=None"):
    dp_aggregation.expected_cohort_size("poisson", 50, 50, None)
