"""The round split into server and site pieces equals the compiled round."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med import compression, losses
from fedjax_med.algorithms import afl, scaffold
from fedjax_med.algorithms import fedavg as fedavg_lib
from fedjax_med.algorithms.settings import CompressionConfig
from fedjax_med.core.client import ClientBatch
from fedjax_med.distributed import site_rounds
from tests import toy

KEY = jax.random.PRNGKey(0)
SIZES = [30, 12, 25, 8, 19]


def _client(**kw):
  return fedavg_lib.ClientConfig(
    learning_rate=0.1,
    num_local_steps=3,
    batch_size=8,
    loss_fn=losses.cross_entropy,
    **kw,
  )


def _site_batches(data):
  return {
    k: ClientBatch(
      x=data.train.x[k],
      y=data.train.y[k],
      num_examples=data.train.num_examples[k],
    )
    for k in range(data.num_clients)
  }


def _build(name):
  model = toy.logistic_model()
  cohort = fedavg_lib.CohortConfig(clients_per_round=3)
  if name == "fedavg":
    return model, fedavg_lib.fedavg(
      model, len(SIZES), client=_client(), cohort=cohort
    )
  # SCAFFOLD keeps control variates per client, error feedback a residual:
  # both rows must stay at the sites and still match the simulation.
  feedback = CompressionConfig(
    uplink=compression.error_feedback(compression.top_k(k=2))
  )
  return model, scaffold.scaffold(
    model, len(SIZES), client=_client(compression=feedback), cohort=cohort
  )


@pytest.mark.parametrize("name", ["fedavg", "scaffold_error_feedback"])
def test_sites_match_compiled_round(name):
  data = toy.random_binary_data(SIZES)
  model, algorithm = _build(name)
  variables = model.init(KEY, jnp.zeros((1, 5)))
  pieces = site_rounds.jit_pieces(algorithm.pieces)
  simulated = algorithm.init(KEY, variables)
  server = algorithm.init(KEY, variables)
  rows = {k: pieces.client_row(server, np.int32(k)) for k in range(len(SIZES))}
  batches = _site_batches(data)
  run_round = jax.jit(algorithm.run_round)

  for r in range(4):
    key = jax.random.fold_in(KEY, r)
    simulated, expected = run_round(simulated, data, key)
    server, metrics, rows = site_rounds.run_round_at_sites(
      pieces, server, key, batches, rows
    )
    for metric in ("train_loss", "uplink_bytes", "cohort_examples"):
      np.testing.assert_allclose(metrics[metric], expected[metric], rtol=1e-5)

  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    (server.params, server.extra, server.opt_state),
    (simulated.params, simulated.extra, simulated.opt_state),
  )
  # Every site's own row equals its row of the simulation's stacked state.
  for k, row in rows.items():
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      row,
      algorithm.pieces.client_row(simulated, k),
    )
  if name != "fedavg":
    # The server never saw the rows: its stacked copy is the initial one.
    initial = algorithm.init(KEY, variables)
    jax.tree.map(
      np.testing.assert_array_equal,
      server.client_states,
      initial.client_states,
    )
    moved = jax.tree.leaves(simulated.client_states)
    assert any(np.abs(leaf).max() > 0 for leaf in moved)


def test_pieces_compile_once():
  data = toy.random_binary_data(SIZES)
  model, algorithm = _build("scaffold_error_feedback")
  variables = model.init(KEY, jnp.zeros((1, 5)))
  traces = {"begin": 0, "client": 0, "end": 0}

  def counted(name):
    def traced(*args):
      traces[name] += 1
      return getattr(algorithm.pieces, name)(*args)

    return jax.jit(traced)

  pieces = site_rounds.jit_pieces(algorithm.pieces)._replace(
    begin=counted("begin"), client=counted("client"), end=counted("end")
  )
  server = algorithm.init(KEY, variables)
  rows = {k: pieces.client_row(server, np.int32(k)) for k in range(5)}
  batches = _site_batches(data)
  for r in range(3):
    server, _, rows = site_rounds.run_round_at_sites(
      pieces, server, jax.random.fold_in(KEY, r), batches, rows
    )
  assert traces == {"begin": 1, "client": 1, "end": 1}


def test_sum_trees_is_float64_then_cast():
  small = np.float32(3e-8)
  trees = [{"a": np.float32(1.0)}] + [{"a": small}] * 4
  total = site_rounds.sum_trees(trees)
  assert total["a"].dtype == np.float32
  # Each 3e-8 is under half a float32 ulp at 1.0, so a float32 running sum
  # stays at 1.0; the float64 sum 1 + 1.2e-7 rounds up to 1 + 2**-23.
  running = np.float32(1.0)
  for _ in range(4):
    running = running + small
  assert running == np.float32(1.0)
  assert total["a"] == np.float32(1.0) + np.float32(2.0**-23)


def test_algorithm_without_pieces_is_named():
  model = toy.logistic_model()
  algorithm = afl.afl(
    model,
    3,
    lambda_learning_rate=0.1,
    client=_client(),
    cohort=fedavg_lib.CohortConfig(3),
  )
  assert algorithm.pieces is None
  with pytest.raises(ValueError, match="'afl'"):
    site_rounds.require_pieces(algorithm, "afl")
