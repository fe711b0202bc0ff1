"""Tests of the chunk size chosen from a memory budget."""

import logging

import jax
import jax.numpy as jnp
import pytest

from configs import fed_heart_disease
from fedjax_med.algorithms import registry
from fedjax_med.core import memory
from fedjax_med.models.registry import get_model
from tests import toy

MIB = memory.MIB


def test_budget_chunk_is_largest_on_a_line():
  # A peak of 1000 + 300 c bytes: a budget of 4000 fits c = 10.
  def bytes_at(chunk):
    return 1000 + 300 * chunk

  assert memory.chunk_for_budget(bytes_at, 64, 4000) == 10
  assert memory.chunk_for_budget(bytes_at, 6, 4000) == 6
  assert memory.chunk_for_budget(bytes_at, 64, 1300) == 1


def test_budget_chunk_fits_convex_growth():
  # Growth faster than the line through chunks 1 and 8 makes the first
  # pick too large, so the search must come back to one that fits.
  def bytes_at(chunk):
    return 1000 + 50 * chunk**2

  budget = 20_000
  chunk = memory.chunk_for_budget(bytes_at, 1000, budget)
  assert bytes_at(chunk) <= budget
  assert chunk >= 10  # The largest fit is 19.


def test_budget_chunk_flat_memory_takes_whole_cohort():
  assert memory.chunk_for_budget(lambda chunk: 5000, 300, 6000) == 300


def test_budget_below_one_client_raises():
  with pytest.raises(ValueError, match="memory_budget_mb=0.0"):
    memory.chunk_for_budget(lambda chunk: MIB * chunk, 10, 1000)


def _mlp_round_setup(clients_per_round, budget_mb):
  data = toy.random_binary_data([20] * 200, num_features=32)
  model = get_model(
    "mlp", num_classes=2, feature_shape=(32,), hidden_sizes=(256,)
  )
  config = fed_heart_disease.get_config()
  config.client.num_local_steps = 2
  config.client.batch_size = 20
  config.cohort.clients_per_round = clients_per_round
  config.cohort.memory_budget_mb = budget_mb
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32)))
  return config, model, data, variables


@pytest.mark.slow
def test_budget_round_memory_stays_within_budget(caplog):
  # A 32-256-2 MLP, 2 local steps of 20 rows: unchunked, a round of 200
  # clients needs about 28 MB of temporary memory on CPU, chunks of one
  # client 0.1 MB, next to 0.5 MB of data.
  budget_mb = 2.5
  config, model, data, variables = _mlp_round_setup(200, budget_mb)
  # Set the absl logger's own level: a test that parses absl flags in this
  # process sets it to WARNING, and then the root level alone lets nothing
  # through.
  with caplog.at_level(logging.INFO, logger="absl"):
    algorithm = registry.build_algorithm(config, model, data)
  assert "clients_per_chunk=" in caplog.text
  used = memory.round_peak_bytes(algorithm, variables, data)
  assert used <= budget_mb * MIB
  # The pick uses the budget, not just one client per chunk.
  assert used >= 0.5 * budget_mb * MIB


def test_negative_budget_raises():
  config, model, data, _ = _mlp_round_setup(50, -1.0)
  with pytest.raises(ValueError, match="memory_budget_mb=-1.0"):
    registry.build_algorithm(config, model, data)
