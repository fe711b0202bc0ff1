"""FedBN: normalization layers stay with the clients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from fedjax_med import losses
from fedjax_med.algorithms import fedavg as fedavg_lib
from fedjax_med.algorithms import fedbn, normalization
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.models.base import from_flax
from fedjax_med.models.mlp import MLP
from fedjax_med.models.registry import get_model
from tests import toy

KEY = jax.random.PRNGKey(0)
NUM_FEATURES = 5


def shifted_data(sizes=(30, 20, 25), seed=0) -> FederatedData:
  """Clients whose features have different means and scales."""
  rng = np.random.default_rng(seed)
  true_w = rng.normal(size=NUM_FEATURES)
  clients = []
  for k, n in enumerate(sizes):
    x = rng.normal(size=(n, NUM_FEATURES)) * (1.0 + k) + 2.0 * k
    y = ((x - 2.0 * k) @ true_w > 0).astype(np.int32)
    clients.append((x.astype(np.float32), y))
  return FederatedData.from_clients(
    clients, clients, num_classes=2, name="shifted"
  )


def bn_model():
  return from_flax(MLP(1, hidden_sizes=(4,), use_batch_norm=True), 1)


def client_config(lr=0.1, steps=3, batch=8):
  return fedavg_lib.ClientConfig(
    learning_rate=lr,
    num_local_steps=steps,
    batch_size=batch,
    loss_fn=losses.cross_entropy,
  )


def run(algorithm, data, variables, rounds, run_round=None, seed=0):
  state = algorithm.init(KEY, variables)
  run_round = run_round or jax.jit(algorithm.run_round)
  for r in range(rounds):
    state, _ = run_round(state, data, jax.random.fold_in(KEY, seed + 100 * r))
  return state


def build(num_clients=3, weighting="example", **client_kw):
  return fedbn.fedbn(
    bn_model(),
    num_clients,
    client=client_config(**client_kw),
    cohort=fedavg_lib.CohortConfig(
      clients_per_round=num_clients, weighting=weighting
    ),
  )


def flat(tree):
  return traverse_util.flatten_dict(dict(tree))


def test_normalization_path_predicate():
  assert normalization.is_normalization_path(("params", "BatchNorm_0", "scale"))
  assert normalization.is_normalization_path(
    ("params", "Block_1", "BatchNorm_2", "bias")
  )
  assert normalization.is_normalization_path(("batch_stats", "B_0", "mean"))
  assert not normalization.is_normalization_path(("params", "Dense_0", "bias"))
  assert not normalization.is_normalization_path(("params", "BatchNorm"))


def test_split_and_merge_round_trip():
  variables = bn_model().init(KEY, jnp.zeros((1, NUM_FEATURES)))
  shared, local = normalization.split_variables(variables)
  assert set(flat(local)) == {
    ("params", "BatchNorm_0", "scale"),
    ("params", "BatchNorm_0", "bias"),
    ("batch_stats", "BatchNorm_0", "mean"),
    ("batch_stats", "BatchNorm_0", "var"),
  }
  assert "batch_stats" not in shared
  assert set(flat(shared)) | set(flat(local)) == set(flat(variables))
  zeros = jax.tree.map(jnp.zeros_like, variables)
  merged = flat(normalization.merge_variables(zeros, local))
  for path, value in flat(variables).items():
    expected = value if path in flat(local) else np.zeros_like(value)
    np.testing.assert_array_equal(merged[path], expected)


ALGORITHM = build()
TRACES = []


def _counted_round(state, data, key):
  TRACES.append(1)
  return ALGORITHM.run_round(state, data, key)


# Every test that runs ALGORITHM shares this one compilation.
RUN_ROUND = jax.jit(_counted_round)


@pytest.fixture(scope="module")
def trained():
  """`(variables, state)` after two FedBN rounds on `shifted_data`."""
  variables = bn_model().init(KEY, jnp.zeros((1, NUM_FEATURES)))
  return variables, run(ALGORITHM, shifted_data(), variables, 2, RUN_ROUND)


def test_normalization_never_aggregated(trained):
  variables, state = trained
  initial_local = flat(normalization.local_variables(variables))
  server_local = flat(
    normalization.local_variables({"params": state.params, **state.model_state})
  )
  for path, value in initial_local.items():
    np.testing.assert_array_equal(server_local[path], value)

  client_local = flat(state.client_states)
  for path, rows in client_local.items():
    assert rows.shape[0] == 3
    assert not np.allclose(rows[0], rows[1]), path
    assert not np.allclose(rows[1], rows[2]), path
    assert not np.allclose(rows[0], initial_local[path]), path


def test_shared_layers_match_fedavg():
  # In the first round every client starts from the initial normalization
  # layers under both methods, so the shared aggregate must be FedAvg's.
  data = shifted_data()
  model = bn_model()
  variables = model.init(KEY, jnp.zeros((1, NUM_FEATURES)))
  fedavg = fedavg_lib.fedavg(
    model,
    3,
    client=client_config(),
    cohort=fedavg_lib.CohortConfig(clients_per_round=3),
  )
  avg_state = run(fedavg, data, variables, rounds=1)
  bn_state = run(ALGORITHM, data, variables, 1, RUN_ROUND)

  avg_params = flat(avg_state.params)
  initial = flat(variables["params"])
  for path, value in flat(bn_state.params).items():
    if normalization.is_normalization_path(("params", *path)):
      np.testing.assert_array_equal(value, initial[path])
      assert not np.allclose(avg_params[path], initial[path])
    else:
      np.testing.assert_allclose(value, avg_params[path], rtol=1e-6)
  # The dense bias before BatchNorm gets no gradient, so check kernels.
  for layer in ("Dense_0", "Dense_1"):
    kernel = (layer, "kernel")
    assert not np.allclose(flat(bn_state.params)[kernel], initial[kernel])


def test_client_variables_rows(trained):
  _, state = trained
  rows = flat(ALGORITHM.client_variables(state))
  shared = flat({"params": state.params})
  client_local = flat(state.client_states)
  for path, value in rows.items():
    assert value.shape[0] == 3
    if normalization.is_normalization_path(path):
      np.testing.assert_array_equal(value, client_local[path])
      assert not np.allclose(value[0], value[2])
    else:
      for k in range(3):
        np.testing.assert_array_equal(value[k], shared[path])


def test_global_variables_average_clients(trained):
  _, state = trained
  global_vars = flat(ALGORITHM.global_variables(state))
  client_local = flat(state.client_states)
  shared = flat({"params": state.params})
  for path, value in global_vars.items():
    if path in client_local:
      np.testing.assert_allclose(
        value, np.mean(client_local[path], axis=0), rtol=1e-6
      )
    else:
      np.testing.assert_array_equal(value, shared[path])


def test_personal_models_evaluate_differently(trained):
  _, state = trained
  rows = ALGORITHM.client_variables(state)
  x = jnp.asarray(shifted_data().test.x[2, :5])
  outputs = [
    bn_model().apply(jax.tree.map(lambda a, k=k: a[k], rows), x)[0]
    for k in range(3)
  ]
  assert not np.allclose(outputs[0], outputs[2])


def test_unsampled_client_keeps_state():
  data = shifted_data()
  variables = bn_model().init(KEY, jnp.zeros((1, NUM_FEATURES)))
  algorithm = fedbn.fedbn(
    bn_model(),
    3,
    client=client_config(),
    cohort=fedavg_lib.CohortConfig(clients_per_round=1),
  )
  state = run(algorithm, data, variables, rounds=1)
  means = state.client_states["batch_stats"]["BatchNorm_0"]["mean"]
  changed = [not np.allclose(means[k], 0.0) for k in range(3)]
  assert sum(changed) == 1


def test_rejects_model_without_batch_norm():
  model = toy.logistic_model()
  algorithm = fedbn.fedbn(
    model,
    2,
    client=client_config(),
    cohort=fedavg_lib.CohortConfig(clients_per_round=2),
  )
  with pytest.raises(ValueError, match="use_batch_norm=True"):
    algorithm.init(KEY, model.init(KEY, jnp.zeros((1, 5))))


def test_round_compiles_once_and_repeats_bits():
  data = shifted_data()
  variables = bn_model().init(KEY, jnp.zeros((1, NUM_FEATURES)))
  first = run(ALGORITHM, data, variables, 3, RUN_ROUND, seed=3)
  second = run(ALGORITHM, data, variables, 3, RUN_ROUND, seed=3)
  assert len(TRACES) == 1
  jax.tree.map(np.testing.assert_array_equal, first, second)


def test_cnn_batch_norm_layers_are_local():
  model = get_model(
    "cnn",
    num_classes=3,
    feature_shape=(8, 8, 1),
    channels=(4, 6),
    use_batch_norm=True,
  )
  variables = model.init(KEY, jnp.zeros((2, 8, 8, 1)))
  local = normalization.local_variables(variables)
  assert sorted(local["params"]) == ["BatchNorm_0", "BatchNorm_1"]
  assert local["batch_stats"]["BatchNorm_1"]["mean"].shape == (6,)
  x = jnp.ones((2, 8, 8, 1))
  _, new_state = model.apply(variables, x, train=True)
  assert not np.allclose(new_state["batch_stats"]["BatchNorm_0"]["mean"], 0)
