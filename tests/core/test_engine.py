"""Tests of cohort sampling, local batching and the chunked cohort map."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med.core import client as client_lib
from fedjax_med.core import engine, sampling
from fedjax_med.core import tree as tree_lib
from fedjax_med.models.registry import get_model


def test_uniform_cohort_distinct_ids():
  keys = jax.random.split(jax.random.PRNGKey(0), 200)
  cohorts = jax.vmap(lambda k: sampling.sample_uniform(k, 10, 4))(keys)
  ids = np.asarray(cohorts.client_ids)
  for row in ids:
    assert len(set(row.tolist())) == 4
  assert ids.min() >= 0
  assert ids.max() <= 9
  assert np.all(np.asarray(cohorts.mask))


def test_poisson_sampling_inclusion_probabilities():
  # N = 20 clients, q = 0.3, 200k draws: Bernoulli inclusion, so the
  # marginal is q, the pairwise inclusion q^2 and P(empty) = 0.7^20.
  num_clients, rate, trials = 20, 0.3, 200_000
  keys = jax.random.split(jax.random.PRNGKey(1), trials)
  cohorts = jax.vmap(
    lambda k: sampling.sample_poisson(k, num_clients, rate, num_clients)
  )(keys)
  ids = np.asarray(cohorts.client_ids)
  mask = np.asarray(cohorts.mask)
  included = np.zeros((trials, num_clients), bool)
  np.put_along_axis(included, ids, mask, axis=1)
  assert abs(included.mean() - 0.3) < 0.003
  assert abs(np.mean(included[:, 0] & included[:, 1]) - 0.09) < 0.002
  sizes = included.sum(axis=1)
  assert abs(sizes.mean() - 6.0) < 0.02
  assert abs(sizes.std() - 2.049) < 0.02
  assert abs(np.mean(sizes == 0) - 0.7**20) < 3e-4
  # Sampled clients fill the first slots.
  for row_mask in mask[:100]:
    count = row_mask.sum()
    assert row_mask[:count].all()
    assert not row_mask[count:].any()


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(clients_per_round=12), "exceeds the 4 clients"),
    (dict(clients_per_round=0), "at least 1"),
    (dict(sampling="systematic"), "unknown"),
    (dict(sampling="poisson", poisson_rate=0.0), "poisson_rate=0.0"),
    (dict(sampling="poisson", poisson_rate=1.5), "poisson_rate=1.5"),
  ],
)
def test_sampler_rejects_bad_requests(kwargs, message):
  options = dict(sampling="uniform", clients_per_round=2, poisson_rate=None)
  options.update(kwargs)
  with pytest.raises(ValueError, match=message):
    sampling.make_sampler(
      options["sampling"],
      4,
      options["clients_per_round"],
      options["poisson_rate"],
      "fed_heart_disease",
    )


@pytest.mark.parametrize("num_examples", [1, 3, 5, 7, 10])
def test_batches_cover_each_epoch_once(num_examples):
  max_examples, batch_size = 10, 3
  key = jax.random.PRNGKey(2)
  b = min(batch_size, num_examples)
  steps = 4 * num_examples  # Several whole epochs.
  rows = []
  for step in range(steps):
    idx, mask = client_lib.batch_indices(
      key, jnp.asarray(step), jnp.asarray(num_examples), max_examples, 3
    )
    idx, mask = np.asarray(idx), np.asarray(mask)
    assert mask.sum() == b
    assert np.all(idx[mask] < num_examples)  # Never a padding row.
    rows.extend(idx[mask].tolist())
  # Every block of num_examples consecutive draws is one epoch: a
  # permutation of the real rows.
  for start in range(0, len(rows) - num_examples + 1, num_examples):
    assert sorted(rows[start : start + num_examples]) == list(
      range(num_examples)
    )


def test_empty_client_batch_is_fully_masked():
  idx, mask = client_lib.batch_indices(
    jax.random.PRNGKey(0), jnp.asarray(3), jnp.asarray(0), 8, 4
  )
  assert not np.asarray(mask).any()
  assert np.all(np.asarray(idx) < 8)


@pytest.mark.parametrize(
  "n",
  [
    1,
    7,
    client_lib.MAX_COUNTING_SORT_ROWS,
    client_lib.MAX_COUNTING_SORT_ROWS + 1,
    200,
  ],
)
def test_stable_argsort_matches_numpy(n):
  # Few distinct keys, so most entries tie: a stable sort keeps tied
  # entries in index order. Above MAX_COUNTING_SORT_ROWS it takes the sort op.
  rng = np.random.default_rng(n)
  keys = rng.integers(0, 4, size=n).astype(np.float32)
  keys[n // 2 :] = 2.0  # Padding rows share one key.
  order = client_lib.stable_argsort(jnp.asarray(keys))
  np.testing.assert_array_equal(order, np.argsort(keys, kind="stable"))


@pytest.mark.parametrize("num_examples", [0, 3, 10])
def test_presampled_permutations_give_the_drawn_batches(
  num_examples, monkeypatch
):
  # local_train draws every epoch's permutation up front when the table is
  # small; batch_indices draws the two it needs otherwise. Same batches.
  key, max_examples, steps = jax.random.PRNGKey(5), 10, 6
  table = client_lib.epoch_permutations(
    key, jnp.arange(steps + 1), jnp.asarray(num_examples), max_examples
  )
  for step in range(steps):
    args = (key, jnp.asarray(step), jnp.asarray(num_examples), max_examples)
    drawn = client_lib.batch_indices(*args, 4)
    presampled = client_lib.batch_indices(*args, 4, table)
    for a, b in zip(drawn, presampled, strict=True):
      np.testing.assert_array_equal(a, b)

  model = get_model("logistic_regression", num_classes=3, feature_shape=(4,))
  x = jax.random.normal(jax.random.PRNGKey(6), (max_examples, 4))
  batch = client_lib.ClientBatch(
    x=x,
    y=jnp.arange(max_examples) % 3,
    num_examples=jnp.asarray(num_examples),
  )
  variables = model.init(jax.random.PRNGKey(7), x[:1])

  def train():
    return client_lib.local_train(
      model,
      variables,
      batch,
      key,
      optimizer=optax.sgd(0.5),
      num_steps=steps,
      batch_size=4,
    ).params

  presampled = train()
  monkeypatch.setattr(client_lib, "MAX_PRESAMPLED_ROWS", 0)
  drawn = train()
  chex.assert_trees_all_equal(presampled, drawn)
  if num_examples:
    assert not np.allclose(
      presampled["Dense_0"]["kernel"], variables["params"]["Dense_0"]["kernel"]
    )


def test_masked_sum_counts_masked_rows_only():
  rng = np.random.default_rng(0)
  tree = {
    "float": rng.normal(size=(6, 3, 2)).astype(np.float32),
    "int": rng.integers(0, 9, size=(6,)).astype(np.int32),
  }
  mask = np.array([True, False, True, True, False, True])
  total = tree_lib.masked_sum(jax.tree.map(jnp.asarray, tree), mask)
  np.testing.assert_allclose(
    total["float"], tree["float"][mask].sum(0), rtol=1e-6
  )
  assert total["int"].dtype == jnp.int32
  assert int(total["int"]) == int(tree["int"][mask].sum())


def _noise_client(key):
  def client_fn(client_id):
    noise = jax.random.normal(jax.random.fold_in(key, client_id), (5,))
    return engine.ClientOutput(
      summed={"noise": noise, "count": jnp.ones(())},
      per_client={"noise": noise},
    )

  return client_fn


def test_client_results_independent_of_cohort_size():
  # A client's randomness comes from fold_in(round_key, client_id), so
  # clients 0-7 draw the same bits in a cohort of 8 or of 16.
  key = jax.random.PRNGKey(3)
  small = sampling.Cohort(jnp.arange(8), jnp.ones(8, bool))
  large = sampling.Cohort(jnp.arange(16), jnp.ones(16, bool))
  _, per_small = engine.map_cohort(_noise_client(key), small)
  _, per_large = engine.map_cohort(_noise_client(key), large)
  np.testing.assert_array_equal(
    per_small["noise"], np.asarray(per_large["noise"])[:8]
  )
  # Another round key gives other noise.
  _, per_other = engine.map_cohort(
    _noise_client(jax.random.fold_in(key, 1)), small
  )
  assert not np.allclose(per_small["noise"], per_other["noise"])


@pytest.mark.parametrize("chunk", [None, 1, 3, 4, 7])
def test_map_cohort_sum_matches_masked_sum(chunk):
  key = jax.random.PRNGKey(4)
  ids = jnp.asarray([5, 2, 9, 0, 7, 3, 1], jnp.int32)
  mask = jnp.asarray([True, True, False, True, True, False, True])
  summed, per_client = engine.map_cohort(
    _noise_client(key), sampling.Cohort(ids, mask), chunk
  )
  noise = np.stack(
    [jax.random.normal(jax.random.fold_in(key, int(i)), (5,)) for i in ids]
  )
  np.testing.assert_allclose(
    summed["noise"], noise[np.asarray(mask)].sum(0), atol=1e-6
  )
  assert float(summed["count"]) == 5.0
  np.testing.assert_array_equal(per_client["noise"], noise)


def test_map_cohort_rejects_negative_chunk():
  cohort = sampling.Cohort(jnp.arange(4), jnp.ones(4, bool))
  with pytest.raises(ValueError, match="clients_per_chunk=-2"):
    engine.map_cohort(_noise_client(jax.random.PRNGKey(0)), cohort, -2)


def test_scatter_rows_skips_masked_slots():
  stacked = {"c": jnp.zeros((5, 2))}
  rows = {"c": jnp.ones((3, 2)) * jnp.asarray([[1.0], [2.0], [3.0]])}
  ids = jnp.asarray([4, 0, 4])
  out = tree_lib.scatter_rows(
    stacked, ids, rows, jnp.asarray([True, True, False])
  )
  expected = np.zeros((5, 2))
  expected[4] = 1.0
  expected[0] = 2.0
  np.testing.assert_array_equal(out["c"], expected)


def _memory_client_fn(weights, data):
  # tanh(x W) with W 512x512, two gradient steps per client.
  def client_fn(client_id):
    x = data[client_id]

    def loss(w):
      return jnp.mean(jnp.tanh(x @ w) ** 2)

    w = weights
    for _ in range(2):
      w = w - 0.1 * jax.grad(loss)(w)
    return engine.ClientOutput(summed={"w": w}, per_client={})

  return client_fn


def _compiled_temp_bytes(num_clients, chunk):
  weights = jnp.zeros((512, 512))
  data = jnp.zeros((num_clients, 32, 512))
  cohort = sampling.Cohort(
    jnp.arange(num_clients, dtype=jnp.int32), jnp.ones(num_clients, bool)
  )

  def run(weights, data):
    return engine.map_cohort(_memory_client_fn(weights, data), cohort, chunk)[0]

  compiled = jax.jit(run).lower(weights, data).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_chunking_bounds_compiled_memory():
  # With a fixed chunk size, temporary memory must not grow with the cohort;
  # without chunking it grows about linearly.
  chunked_small = _compiled_temp_bytes(32, 8)
  chunked_large = _compiled_temp_bytes(128, 8)
  assert chunked_large <= 1.2 * chunked_small
  unchunked_large = _compiled_temp_bytes(128, None)
  assert unchunked_large > 2 * chunked_large


def test_chunked_aggregate_matches_unchunked():
  rng = np.random.default_rng(0)
  weights = jnp.asarray(rng.normal(size=(512, 512)) / 20, jnp.float32)
  data = jnp.asarray(rng.normal(size=(24, 32, 512)), jnp.float32)
  cohort = sampling.Cohort(jnp.arange(24, dtype=jnp.int32), jnp.ones(24, bool))
  client_fn = _memory_client_fn(weights, data)
  full = engine.map_cohort(client_fn, cohort, None)[0]["w"]
  chunked = engine.map_cohort(client_fn, cohort, 8)[0]["w"]
  np.testing.assert_allclose(full, chunked, rtol=1e-5, atol=2e-5)
