"""FedHypeVAE: closed forms of its model pieces, DP, accounting, the round."""

import dp_accounting
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fedjax_med.algorithms import fedavg as fedavg_lib
from fedjax_med.algorithms import fedhypevae
from fedjax_med.algorithms import fedhypevae_synthesis as synthesis
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.losses import mmd as mmd_lib
from fedjax_med.models import hyper_cvae
from fedjax_med.privacy import dp_sgd
from fedjax_med.training import privacy_budget
from fedjax_med.training.checkpoint import Checkpointer

KEY = jax.random.PRNGKey(0)
SMALL = hyper_cvae.CVAEConfig(
  embedding_dim=5, num_classes=3, latent_dim=4, hidden_size=8, code_dim=3
)


def _toy_data(num_clients=3, n=24, d=5, k=3, seed=0):
  rng = np.random.default_rng(seed)
  clients = []
  for i in range(num_clients):
    size = n - 4 * i
    y = rng.integers(0, k, size).astype(np.int32)
    x = (rng.normal(size=(size, d)) + y[:, None]).astype(np.float32)
    clients.append((x, y))
  return FederatedData.from_clients(clients, clients, num_classes=k, name="toy")


def _settings(**changes):
  base = dict(
    latent_dim=4,
    hidden_size=8,
    code_dim=3,
    hyper_hidden_size=8,
    mmd_samples=4,
    synthesis=synthesis.SynthesisConfig(
      meta_code_steps=5,
      monte_carlo_samples=8,
      samples_per_class=10,
      classifier_steps=5,
    ),
  )
  return fedhypevae.FedHypeVAEConfig(**{**base, **changes})


def _client(dp=None, steps=2):
  return fedavg_lib.ClientConfig(
    learning_rate=1e-2,
    num_local_steps=steps,
    batch_size=8,
    optimizer="adam",
    dp_sgd=dp,
  )


def _build(data, dp=None, **changes):
  return fedhypevae.fedhypevae(
    data,
    config=_settings(**changes),
    client=_client(dp),
    cohort=fedavg_lib.CohortConfig(clients_per_round=data.num_clients),
  )


def test_kl_matches_full_covariance_formula():
  rng = np.random.default_rng(0)
  mu_q, mu_p = rng.normal(size=(2, 6))
  log_var_q, log_sigma_p = 0.5 * rng.normal(size=(2, 6))
  got = hyper_cvae.kl_diagonal_gaussians(mu_q, log_var_q, mu_p, log_sigma_p)
  # KL(N0 || N1) = 0.5 [tr(S1^-1 S0) + d^T S1^-1 d - k + ln det S1 / det S0]
  s0 = np.diag(np.exp(log_var_q))
  s1 = np.diag(np.exp(2 * log_sigma_p))
  s1_inv = np.linalg.inv(s1)
  diff = mu_p - mu_q
  expected = 0.5 * (
    np.trace(s1_inv @ s0)
    + diff @ s1_inv @ diff
    - 6
    + np.log(np.linalg.det(s1) / np.linalg.det(s0))
  )
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_elbo_kl_term_is_closed_form():
  model = hyper_cvae.hyper_cvae(SMALL)
  phi = model.init_phi(KEY)
  psi = model.init_encoder(jax.random.PRNGKey(1))
  code = jnp.array([0.3, -0.2, 0.1])
  x, y = jnp.arange(5.0) / 5, jnp.array(2)
  rng = jax.random.PRNGKey(2)
  elbo = hyper_cvae.example_elbo(model, phi, psi, code, x, y, rng)
  # Rebuild the reconstruction term from the same z and subtract.
  mu_q, log_var_q = model.encode(psi, x, y)
  eps = jax.random.normal(rng, mu_q.shape)
  z = mu_q + jnp.exp(0.5 * log_var_q) * eps
  outputs = model.hyper_outputs(phi, code)
  mean = model.decode_mean(phi, outputs, z, y)
  scale = np.exp(np.asarray(phi["decoder"]["log_scale"]))
  log_lik = np.sum(
    -0.5 * ((x - mean) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi)
  )
  mu_p, log_sigma_p = model.prior(phi, outputs, y)
  var_q, var_p = np.exp(log_var_q), np.exp(2 * log_sigma_p)
  kl = np.sum(
    np.log(np.sqrt(var_p / var_q)) + (var_q + (mu_q - mu_p) ** 2) / (2 * var_p)
  ) - 0.5 * len(mu_q)
  np.testing.assert_allclose(elbo, log_lik - kl, rtol=1e-5)


def test_mmd_matches_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(7, 3)).astype(np.float32)
  x_hat = (rng.normal(size=(5, 3)) + 0.5).astype(np.float32)
  bandwidths = (0.5, 2.0)

  def kernel(a, b):
    d2 = np.sum((a[:, None] - b[None]) ** 2, axis=-1)
    return np.mean([np.exp(-d2 / (2 * s**2)) for s in bandwidths], axis=0)

  expected = (
    kernel(x, x).mean()
    + kernel(x_hat, x_hat).mean()
    - 2 * kernel(x, x_hat).mean()
  )
  got = mmd_lib.mmd_squared(jnp.asarray(x), jnp.asarray(x_hat), bandwidths)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # The per-example terms average to MMD^2 minus the real-only term.
  terms = jax.vmap(
    lambda row: mmd_lib.example_mmd_term(row, x_hat, bandwidths)
  )(jnp.asarray(x))
  np.testing.assert_allclose(
    jnp.mean(terms), expected - kernel(x, x).mean(), rtol=1e-5
  )


def test_decoder_is_row_scaled():
  model = hyper_cvae.hyper_cvae(SMALL._replace(hyper_output_scale=0.5))
  phi = model.init_phi(KEY)
  code = jnp.array([1.0, -2.0, 0.5])
  outputs = model.hyper_outputs(phi, code)
  weights = model.decoder_weights(phi, outputs)
  for index, (kernel, bias) in enumerate(weights):
    base = phi["decoder"][f"layer_{index}"]
    w = np.asarray(
      base["kernel"]
    ).T  # [out, in], the W_l of W_l(v) = diag(d_l(v)) W_l.
    d = np.asarray(outputs.row_scales[index])
    assert not np.allclose(d, 1.0)
    np.testing.assert_allclose(np.asarray(kernel).T, np.diag(d) @ w, rtol=1e-6)
    np.testing.assert_allclose(
      bias, base["bias"] + outputs.bias_shifts[index], rtol=1e-6
    )


@pytest.mark.parametrize(
  "placement,expected", [("sum", 1.1 / 64), ("mean", 1.1)]
)
def test_dp_noise_std_on_averaged_update(placement, expected):
  summed = {"a": jnp.zeros((1000,)), "b": jnp.zeros((10, 10))}
  keys = jax.random.split(KEY, 64)
  draws = jax.vmap(
    lambda key: fedhypevae.privatize_gradient_sum(
      summed,
      jnp.float32(64.0),
      key,
      clip_norm=1.0,
      noise_multiplier=1.1,
      noise_placement=placement,
    )
  )(keys)
  for leaf in jax.tree.leaves(draws):
    np.testing.assert_allclose(np.std(leaf), expected, rtol=0.03)


@pytest.mark.slow
def test_local_step_with_zero_gradients_is_noise():
  # A loss with zero gradient leaves only the DP noise in the step.
  model = hyper_cvae.hyper_cvae(SMALL)
  settings = _settings(mmd_weight=0.0, code_weight=0.0, lipschitz_weight=0.0)
  dp = dp_sgd.DPSGDConfig(clip_norm=1.0, noise_multiplier=1.1)
  client = fedavg_lib.ClientConfig(batch_size=64, dp_sgd=dp)
  step = fedhypevae.make_local_step(model, settings, client)
  trained = {
    "phi": model.init_phi(KEY),
    "encoder": model.init_encoder(KEY),
    "code": jnp.zeros((3,)),
  }
  # Zero-size client: the batch is empty, every per-example term is masked.
  batch = dp_sgd_batch(n=0, rows=4)
  gradients = jax.vmap(lambda key: step(trained, batch, key)[0])(
    jax.random.split(KEY, 4)
  )
  flat = np.concatenate([np.ravel(g) for g in jax.tree.leaves(gradients)])
  np.testing.assert_allclose(np.std(flat), 1.1 / 64, rtol=0.03)


def dp_sgd_batch(n, rows):
  from fedjax_med.core.client import ClientBatch

  return ClientBatch(
    x=jnp.zeros((rows, 5)),
    y=jnp.zeros((rows,), jnp.int32),
    num_examples=jnp.int32(n),
  )


def test_server_receives_only_phi_delta():
  data = _toy_data()
  built = _build(data)
  state = built.algorithm.init(KEY, {})
  output = jax.eval_shape(
    lambda: built.client_message(state, data, KEY, jnp.float32(0.01), 0)
  )
  assert set(output.summed) == {"weighted_delta", "weight", "weighted_loss"}
  assert jax.tree.structure(output.summed["weighted_delta"]) == (
    jax.tree.structure(state.params)
  )
  assert set(output.summed["weighted_delta"]) == set(state.params)
  assert output.summed["weight"].shape == ()
  assert output.summed["weighted_loss"].shape == ()
  # The private state stays per client.
  assert set(output.per_client) == {"encoder", "code"}


@pytest.mark.slow
def test_round_compiles_once_and_resumes(tmp_path):
  data = _toy_data()
  dp = dp_sgd.DPSGDConfig(clip_norm=1.0, noise_multiplier=1.0)
  built = _build(data, dp=dp)
  initial = built.algorithm.init(KEY, {})
  round_fn = jax.jit(built.algorithm.run_round)
  state = initial
  for r in range(3):
    state, metrics = round_fn(state, data, jax.random.fold_in(KEY, r))
  assert round_fn._cache_size() == 1
  assert np.isfinite(float(metrics["train_loss"]))
  assert int(state.round) == 3
  moved = jnp.max(
    jnp.abs(state.client_states["code"] - initial.client_states["code"])
  )
  assert float(moved) > 0
  params = built.algorithm.global_variables(state)["params"]
  assert params["Dense_0"]["kernel"].shape == (5, 3)

  # Checkpoint after one round, restore into a fresh state, run two more.
  resumed, _ = round_fn(initial, data, jax.random.fold_in(KEY, 0))
  checkpointer = Checkpointer(str(tmp_path))
  checkpointer.save(1, resumed, KEY, {})
  restored, _ = checkpointer.restore(1, built.algorithm.init(KEY, {}), KEY)
  checkpointer.close()
  for r in (1, 2):
    restored, _ = round_fn(restored, data, jax.random.fold_in(KEY, r))
  for a, b in zip(
    jax.tree.leaves(restored), jax.tree.leaves(state), strict=True
  ):
    np.testing.assert_array_equal(a, b)


def test_statistics_match_numpy_without_noise():
  data = _toy_data()
  stats = synthesis.release_class_statistics(
    jnp.asarray(data.train.x),
    jnp.asarray(data.train.y),
    jnp.asarray(data.train.num_examples),
    3,
    clip_norm=100.0,
    noise_multiplier=0.0,
    key=KEY,
  )
  rows = [
    (data.train.x[i, :n], data.train.y[i, :n])
    for i, n in enumerate(data.train.num_examples)
  ]
  x = np.concatenate([r[0] for r in rows])
  y = np.concatenate([r[1] for r in rows])
  for label in range(3):
    members = x[y == label]
    np.testing.assert_allclose(stats.count[label], len(members))
    np.testing.assert_allclose(stats.mean[label], members.mean(0), atol=1e-4)
    np.testing.assert_allclose(
      stats.covariance[label], np.cov(members.T, bias=True), atol=1e-3
    )


def _dp_config(num_rounds=4):
  config = ml_collections.ConfigDict()
  config.num_rounds = num_rounds
  config.algorithm = ml_collections.ConfigDict(dict(name="fedhypevae"))
  config.client = ml_collections.ConfigDict(
    dict(batch_size=8, num_local_steps=3)
  )
  config.privacy = ml_collections.ConfigDict(
    dict(
      mode="example",
      noise_multiplier=1.3,
      delta=1e-5,
      statistics_noise_multiplier=5.0,
    )
  )
  return config


def test_accounting_matches_dp_accounting():
  data = _toy_data()
  setup = privacy_budget.setup_privacy(_dp_config(), data)
  setup.accountant.step(4)
  for name, size in zip(
    data.client_names, data.train.num_examples, strict=True
  ):
    accountant = dp_accounting.rdp.RdpAccountant()
    sampled = dp_accounting.PoissonSampledDpEvent(
      8 / size, dp_accounting.GaussianDpEvent(1.3)
    )
    accountant.compose(dp_accounting.SelfComposedDpEvent(sampled, 4 * 3))
    accountant.compose(dp_accounting.GaussianDpEvent(5.0))
    expected = accountant.get_epsilon(1e-5)
    assert setup.accountant.epsilons()[name] == pytest.approx(expected, 1e-9)


def test_statistics_release_raises_epsilon():
  data = _toy_data()
  with_release = privacy_budget.setup_privacy(_dp_config(), data).accountant
  config = _dp_config()
  config.privacy.statistics_noise_multiplier = 0.0
  without = privacy_budget.setup_privacy(config, data).accountant
  with_release.step(4)
  without.step(4)
  assert with_release.epsilon() > without.epsilon()


def test_dp_requires_statistics_noise():
  data = _toy_data()
  config = _dp_config()
  config.privacy.statistics_noise_multiplier = 0.0
  with pytest.raises(ValueError, match="statistics_noise_multiplier"):
    fedhypevae.from_config(
      config,
      None,
      data,
      client=_client(),
      cohort=fedavg_lib.CohortConfig(clients_per_round=3),
      server_learning_rate=1.0,
      aggregator=None,
      dataset_name="toy",
    )


def test_unknown_noise_placement_raises():
  with pytest.raises(ValueError, match="noise_placement"):
    fedhypevae.validate_config(_settings(noise_placement="average"))


def test_spectral_norm_matches_numpy():
  kernel = jax.random.normal(KEY, (8, 16))
  np.testing.assert_allclose(
    hyper_cvae.spectral_norm(kernel, num_iterations=100),
    np.linalg.norm(np.asarray(kernel), 2),
    rtol=1e-4,
  )
