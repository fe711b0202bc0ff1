"""FedAvg, FedProx, SCAFFOLD and server optimizers against closed forms."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax import tree_utils as otu

from fedjax_med import losses
from fedjax_med.algorithms import fedavg as fedavg_lib
from fedjax_med.algorithms import fedopt, fedprox, scaffold
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.models.base import from_flax
from tests import toy

KEY = jax.random.PRNGKey(0)


def _run(algorithm, data, variables, rounds, seed=0):
  state = algorithm.init(KEY, variables)
  run_round = jax.jit(algorithm.run_round)
  history = []
  for r in range(rounds):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), r)
    state, metrics = run_round(state, data, key)
    history.append(metrics)
  return state, history


def _scalar_variables():
  return {"params": {"w": jnp.zeros(())}}


def _client(lr=0.1, steps=1, batch=1000, loss_fn=toy.squared_error, **kw):
  return fedavg_lib.ClientConfig(
    learning_rate=lr,
    num_local_steps=steps,
    batch_size=batch,
    loss_fn=loss_fn,
    **kw,
  )


def _all_clients(n, **kw):
  return fedavg_lib.CohortConfig(clients_per_round=n, **kw)


def test_fedavg_one_client_one_step_is_sgd():
  data = toy.random_binary_data([40])
  model = toy.logistic_model()
  variables = model.init(KEY, jnp.zeros((1, 5)))
  algorithm = fedavg_lib.fedavg(
    model,
    1,
    client=_client(lr=0.3, loss_fn=losses.cross_entropy),
    cohort=_all_clients(1),
  )
  state, _ = _run(algorithm, data, variables, 1)

  x, y = data.train.client(0)

  def loss(params):
    logits, _ = model.apply({"params": params}, x)
    return jnp.mean(losses.cross_entropy(logits, jnp.asarray(y)))

  grads = jax.grad(loss)(variables["params"])
  expected = jax.tree.map(lambda p, g: p - 0.3 * g, variables["params"], grads)
  chex_close = jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
    state.params,
    expected,
  )
  del chex_close


@pytest.mark.parametrize(
  "weighting, expected",
  # One step from w = 0 with lr 0.1 on (w - b)^2 moves client k to
  # 0.2 * b_k. Targets 1 and 5 with 10 and 30 rows.
  [("example", (10 * 0.2 + 30 * 1.0) / 40), ("uniform", (0.2 + 1.0) / 2)],
)
def test_fedavg_weighting(weighting, expected):
  data = toy.quadratic_data([1, 5], [10, 30])
  algorithm = fedavg_lib.fedavg(
    toy.scalar_model(),
    2,
    client=_client(),
    cohort=_all_clients(2, weighting=weighting),
  )
  state, _ = _run(algorithm, data, _scalar_variables(), 1)
  np.testing.assert_allclose(state.params["w"], expected, rtol=1e-6)


def test_fedavg_ignores_empty_client():
  # Client 2 holds no rows: it adds no weight under either weighting, and
  # the round neither fails nor produces NaN.
  data = toy.quadratic_data([1, 5, 3], [10, 30, 0])
  for weighting in ("example", "uniform"):
    algorithm = fedavg_lib.fedavg(
      toy.scalar_model(),
      3,
      client=_client(),
      cohort=_all_clients(3, weighting=weighting),
    )
    state, history = _run(algorithm, data, _scalar_variables(), 1)
    assert np.isfinite(float(state.params["w"]))
    assert float(history[0]["cohort_examples"]) == 40.0
  np.testing.assert_allclose(state.params["w"], (0.2 + 1.0) / 2, rtol=1e-6)


def test_empty_poisson_cohort_keeps_state():
  data = toy.quadratic_data([1, 5], [10, 30])
  algorithm = fedopt.fedopt(
    toy.scalar_model(),
    2,
    server_optimizer_name="momentum",
    server_learning_rate=1.0,
    client=_client(),
    cohort=_all_clients(2, sampling="poisson", poisson_rate=1e-9),
  )
  state0 = algorithm.init(KEY, {"params": {"w": jnp.asarray(0.7)}})
  state1, metrics = jax.jit(algorithm.run_round)(state0, data, KEY)
  assert int(metrics["cohort_size"]) == 0
  assert float(metrics["train_loss"]) == 0.0
  assert float(state1.params["w"]) == pytest.approx(0.7)
  jax.tree.map(
    np.testing.assert_array_equal, state1.opt_state, state0.opt_state
  )
  assert int(state1.round) == 1


@pytest.mark.parametrize(
  "mu, steps, expected",
  # Local GD with lr 0.1 on (w - 3)^2 + (mu / 2) w^2 from w_global = 0.
  [(0.5, 5, 1.83046875), (0.0, 5, 2.01696), (0.5, 1000, 2.4)],
)
def test_fedprox_closed_form(mu, steps, expected):
  data = toy.quadratic_data([3], [4])
  algorithm = fedprox.fedprox(
    toy.scalar_model(),
    1,
    mu=mu,
    client=_client(steps=steps),
    cohort=_all_clients(1),
  )
  state, _ = _run(algorithm, data, _scalar_variables(), 1)
  np.testing.assert_allclose(state.params["w"], expected, rtol=1e-5)


def test_fedprox_anchor_is_round_start():
  # The proximal gradient is mu * (w - w_global) with w_global frozen for
  # the round; anchoring to the moving local weights would make it zero.
  term = fedprox.proximal_regularizer(0.5)({"w": jnp.asarray(1.0)}, (), ())
  grad = jax.grad(term)({"w": jnp.asarray(3.0)})
  assert float(grad["w"]) == pytest.approx(0.5 * (3.0 - 1.0))


def test_fedprox_mu_zero_equals_fedavg_bitwise():
  data = toy.random_binary_data([30, 12, 25])
  model = toy.logistic_model()
  variables = model.init(KEY, jnp.zeros((1, 5)))
  common = dict(
    client=_client(lr=0.2, steps=4, batch=8, loss_fn=losses.cross_entropy),
    cohort=_all_clients(2),
  )
  avg, _ = _run(fedavg_lib.fedavg(model, 3, **common), data, variables, 3)
  prox0, _ = _run(
    fedprox.fedprox(model, 3, mu=0.0, **common), data, variables, 3
  )
  prox1, _ = _run(
    fedprox.fedprox(model, 3, mu=1.0, **common), data, variables, 3
  )
  jax.tree.map(np.testing.assert_array_equal, avg.params, prox0.params)
  kernel_avg = np.asarray(avg.params["Dense_0"]["kernel"])
  kernel_prox = np.asarray(prox1.params["Dense_0"]["kernel"])
  assert np.max(np.abs(kernel_avg - kernel_prox)) > 1e-4


def _scaffold_reference(targets, sizes, lr, steps, rounds):
  """Numpy SCAFFOLD (option II) on clients with loss (w - b_k)^2."""
  num_clients = len(targets)
  w, c = 0.0, 0.0
  c_k = np.zeros(num_clients)
  for _ in range(rounds):
    deltas, control_deltas = [], []
    for k, b in enumerate(targets):
      y = w
      for _ in range(steps):
        y = y - lr * (2 * (y - b) - c_k[k] + c)
      new_c = c_k[k] - c + (w - y) / (steps * lr)
      deltas.append(y - w)
      control_deltas.append(new_c - c_k[k])
      c_k[k] = new_c
    w = w + np.average(deltas, weights=sizes)
    c = c + np.sum(control_deltas) / num_clients
  return w, c, c_k


def test_scaffold_matches_paper_update():
  targets, sizes = [1, 5, 2], [10, 30, 20]
  data = toy.quadratic_data(targets, sizes)
  algorithm = scaffold.scaffold(
    toy.scalar_model(),
    3,
    client=_client(lr=0.05, steps=3),
    cohort=_all_clients(3),
  )
  state, _ = _run(algorithm, data, _scalar_variables(), 3)
  w, c, c_k = _scaffold_reference(targets, sizes, 0.05, 3, 3)
  server_control, client_controls = scaffold.control_variates(state)
  np.testing.assert_allclose(state.params["w"], w, rtol=1e-5)
  np.testing.assert_allclose(server_control["w"], c, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(client_controls["w"], c_k, rtol=1e-5, atol=1e-6)
  # Control variates are non-trivial, so the test can tell a wrong sign.
  assert np.max(np.abs(c_k)) > 0.1


def test_scaffold_updates_only_sampled_clients():
  data = toy.quadratic_data([1, 5, 2, 4], [10, 30, 20, 5])
  algorithm = scaffold.scaffold(
    toy.scalar_model(),
    4,
    client=_client(lr=0.05, steps=3),
    cohort=_all_clients(2),
  )
  state, _ = _run(algorithm, data, _scalar_variables(), 1)
  _, client_controls = scaffold.control_variates(state)
  assert int(np.sum(np.asarray(client_controls["w"]) != 0)) == 2


@pytest.mark.parametrize("name", ["momentum", "adagrad", "adam", "yogi"])
def test_server_optimizer_matches_optax_on_negated_delta(name):
  data = toy.random_binary_data([30, 12, 25])
  model = toy.logistic_model()
  variables = model.init(KEY, jnp.zeros((1, 5)))
  client = _client(lr=0.2, steps=3, batch=8, loss_fn=losses.cross_entropy)
  cohort = _all_clients(3)
  algorithm = fedopt.fedopt(
    model,
    3,
    server_optimizer_name=name,
    server_learning_rate=0.05,
    client=client,
    cohort=cohort,
  )
  plain = fedavg_lib.fedavg(model, 3, client=client, cohort=cohort)
  reference = fedopt.server_optimizer(name, 0.05)

  state = algorithm.init(KEY, variables)
  run_round = jax.jit(algorithm.run_round)
  run_plain_round = jax.jit(plain.run_round)
  ref_params = variables["params"]
  ref_opt_state = reference.init(ref_params)
  for r in range(3):
    key = jax.random.fold_in(KEY, r)
    # FedAvg with server lr 1 from the same parameters gives the mean delta.
    probe = plain.init(KEY, {"params": ref_params})
    probe, _ = run_plain_round(probe, data, key)
    mean_delta = otu.tree_sub(probe.params, ref_params)
    updates, ref_opt_state = reference.update(
      otu.tree_scale(-1.0, mean_delta), ref_opt_state, ref_params
    )
    ref_params = optax.apply_updates(ref_params, updates)
    state, _ = run_round(state, data, key)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      state.params,
      ref_params,
    )


def test_client_learning_rate_schedule_by_round():
  data = toy.quadratic_data([1, 5], [10, 30])
  schedule = optax.exponential_decay(0.1, transition_steps=10, decay_rate=0.5)
  algorithm = fedavg_lib.fedavg(
    toy.scalar_model(),
    2,
    client=_client(lr=schedule),
    cohort=_all_clients(2),
  )
  _, history = _run(algorithm, data, _scalar_variables(), 26)
  used = [float(history[r]["client_learning_rate"]) for r in (0, 10, 20, 25)]
  np.testing.assert_allclose(used, [0.1, 0.05, 0.025, 0.0176777], rtol=1e-5)


def test_round_compiles_once():
  # Clients of 37, 50, 64 and 37 rows padded to 64, a decaying learning rate
  # and a new key every round: one trace only.
  data = toy.random_binary_data([37, 50, 64, 37])
  model = toy.logistic_model()
  variables = model.init(KEY, jnp.zeros((1, 5)))
  schedule = optax.exponential_decay(0.1, transition_steps=1, decay_rate=0.9)
  for build in (fedavg_lib.fedavg, scaffold.scaffold):
    algorithm = build(
      model,
      4,
      client=_client(
        lr=schedule, steps=3, batch=16, loss_fn=losses.cross_entropy
      ),
      cohort=_all_clients(2, clients_per_chunk=1),
    )
    traces = []

    def counted(state, data, key, algorithm=algorithm, traces=traces):
      traces.append(1)
      return algorithm.run_round(state, data, key)

    run_round = jax.jit(counted)
    state = algorithm.init(KEY, variables)
    for r in range(5):
      state, _ = run_round(state, data, jax.random.fold_in(KEY, r))
    assert len(traces) == 1


def _final_params(chunk, seed=0, rounds=3):
  data = toy.random_binary_data([30, 12, 25, 8, 19, 40, 3])
  model = toy.logistic_model()
  variables = model.init(KEY, jnp.zeros((1, 5)))
  algorithm = scaffold.scaffold(
    model,
    7,
    client=_client(lr=0.2, steps=4, batch=8, loss_fn=losses.cross_entropy),
    cohort=_all_clients(5, clients_per_chunk=chunk),
  )
  state, _ = _run(algorithm, data, variables, rounds, seed=seed)
  return state


def test_same_seed_gives_identical_bits():
  first, second = _final_params(2), _final_params(2)
  jax.tree.map(np.testing.assert_array_equal, first, second)
  other = _final_params(2, seed=1)
  assert not np.array_equal(
    first.params["Dense_0"]["kernel"], other.params["Dense_0"]["kernel"]
  )


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_result_does_not_depend_on_chunk_size(chunk):
  reference = _final_params(None)
  chunked = _final_params(chunk)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    reference,
    chunked,
  )


class _BatchNormProbe(nn.Module):
  """A BatchNorm layer whose running mean becomes the last batch mean."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.BatchNorm(use_running_average=not train, momentum=0.0)(x)
    return nn.Dense(1)(x)


def test_batch_stats_averaged_not_optimized():
  # Clients of 100 and 300 rows whose features are 0 and 10: after local
  # training their running means are 0 and 10, so the example-weighted
  # global mean is (100 * 0 + 300 * 10) / 400 = 7.5.
  clients = [
    (np.zeros((100, 1), np.float32), np.zeros(100, np.int32)),
    (np.full((300, 1), 10.0, np.float32), np.ones(300, np.int32)),
  ]
  data = FederatedData.from_clients(clients, clients, num_classes=2)
  model = from_flax(_BatchNormProbe(), 1)
  variables = model.init(KEY, jnp.zeros((1, 1)))
  for name in ("sgd", "adam"):
    algorithm = fedopt.fedopt(
      model,
      2,
      server_optimizer_name=name,
      server_learning_rate=0.1,
      client=_client(lr=0.1, steps=2, batch=300, loss_fn=losses.cross_entropy),
      cohort=_all_clients(2),
    )
    state, _ = _run(algorithm, data, variables, 1)
    mean = state.model_state["batch_stats"]["BatchNorm_0"]["mean"]
    np.testing.assert_allclose(mean, [7.5], rtol=1e-6)
    opt_paths = [
      jax.tree_util.keystr(path)
      for path, _ in jax.tree_util.tree_leaves_with_path(state.opt_state)
    ]
    assert not any(
      "batch_stats" in p or "BatchNorm" in p and "mean" in p for p in opt_paths
    )
    assert "batch_stats" not in state.params


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(lr=0.0), "learning_rate=0.0 must be positive"),
    (dict(lr=-1.0), "learning_rate=-1.0 must be positive"),
    (dict(steps=0), "num_local_steps=0"),
    (dict(optimizer="lbfgs"), "optimizer='lbfgs' is unknown"),
  ],
)
def test_bad_client_settings_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    fedavg_lib.fedavg(
      toy.scalar_model(), 2, client=_client(**kwargs), cohort=_all_clients(2)
    )


def test_bad_weighting_raises():
  with pytest.raises(ValueError, match="weighting='size'"):
    fedavg_lib.fedavg(
      toy.scalar_model(),
      2,
      client=_client(),
      cohort=_all_clients(2, weighting="size"),
    )


def test_custom_aggregator_sees_postprocessed_deltas():
  # A post-processing step that halves every delta, and a finalize that
  # divides by a fixed public denominator instead of the realised weight.
  from fedjax_med.core import aggregation

  def postprocess(delta, weight, state, key, *, client_id, cohort):
    del key, client_id, cohort
    return otu.tree_scale(0.5, delta), jnp.ones(()), {"seen": jnp.ones(())}

  def finalize(weighted_sum, weight_sum, extra_sum, cohort_size, state, key):
    del weight_sum, key
    mean = otu.tree_scale(1.0 / 4.0, weighted_sum)
    metrics = {"seen": extra_sum["seen"], "size": cohort_size}
    return aggregation.Finalized(mean, jnp.asarray(True), state + 1, metrics)

  aggregator = aggregation.Aggregator(
    init=lambda params: jnp.zeros((), jnp.int32),
    postprocess=postprocess,
    finalize=finalize,
  )
  data = toy.quadratic_data([1, 5], [10, 30])
  algorithm = fedavg_lib.build_fedavg_family(
    toy.scalar_model(),
    2,
    client=_client(),
    cohort=_all_clients(2),
    server_optimizer=optax.sgd(1.0),
    aggregator=aggregator,
  )
  state, history = _run(algorithm, data, _scalar_variables(), 1)
  # Client deltas 0.2 and 1.0, halved, summed with unit weights, over 4.
  np.testing.assert_allclose(state.params["w"], (0.1 + 0.5) / 4, rtol=1e-6)
  assert int(state.aggregator_state) == 1
  assert float(history[0]["seen"]) == 2.0
  assert int(history[0]["size"]) == 2
