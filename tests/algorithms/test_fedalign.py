"""FedAlign: its losses, MixStyle, the style pool and the compiled round."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import fed_heart_disease_fedalign
from fedjax_med.algorithms import fedalign, fedalign_style
from fedjax_med.algorithms import fedavg as fedavg_lib
from fedjax_med.data.registry import load_dataset
from fedjax_med.losses import alignment
from fedjax_med.losses.classification import cross_entropy
from fedjax_med.models.registry import get_model
from fedjax_med.training import experiment
from fedjax_med.training.checkpoint import Checkpointer
from tests import toy

KEY = jax.random.PRNGKey(0)


def test_supcon_hand_value():
  # Z = [a0, a1, f0, f1] = [(0,1), (0,1), (1,0), (0,1)], labels [0,1,0,1].
  # With tau = 1, anchors a0, a1 and f1 have log(2e + 1) as negative term,
  # f0 has log 3. FedAlign's positives (self included) have mean
  # similarity 0.5, 1, 0.5, 1; the standard ones (self excluded) 0, 1, 0, 1.
  augmented = jnp.asarray([[0.0, 2.0], [0.0, 1.0]])
  features = jnp.asarray([[3.0, 0.0], [0.0, 0.5]])
  labels = jnp.asarray([0, 1])
  mask = jnp.asarray([True, True])
  big = math.log(2 * math.e + 1)
  code = (3 * big + math.log(3) - 3) / 4
  standard = (3 * big + math.log(3) - 2) / 4

  value = alignment.supervised_contrastive(
    augmented, features, labels, mask, temperature=1.0
  )
  np.testing.assert_allclose(value, code, rtol=1e-6)
  value = alignment.supervised_contrastive(
    augmented, features, labels, mask, temperature=1.0, standard=True
  )
  np.testing.assert_allclose(value, standard, rtol=1e-6)


def test_supcon_ignores_padding_rows():
  rng = np.random.default_rng(0)
  augmented = rng.normal(size=(5, 3)).astype(np.float32)
  features = rng.normal(size=(5, 3)).astype(np.float32)
  labels = np.asarray([0, 1, 0, 1, 0])
  mask = np.asarray([True, True, True, False, False])
  padded = alignment.supervised_contrastive(
    augmented, features, labels, mask, temperature=0.1
  )
  trimmed = alignment.supervised_contrastive(
    augmented[:3], features[:3], labels[:3], mask[:3], temperature=0.1
  )
  np.testing.assert_allclose(padded, trimmed, rtol=1e-6)


def test_supcon_temperature_scales_similarities():
  # The same orthonormal example at tau = 0.5 doubles every similarity.
  augmented = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])
  features = augmented
  labels = jnp.asarray([0, 1])
  mask = jnp.asarray([True, True])
  # Each anchor: positives {self, twin} at 2; others e^2 (twin) + 2 e^0.
  expected = math.log(math.exp(2.0) + 2.0) - 2.0
  value = alignment.supervised_contrastive(
    augmented, features, labels, mask, temperature=0.5
  )
  np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_jensen_shannon_hand_value():
  # M = (2/3, 1/3): KL(P || M) = 0.5 ln 1.125 twice, KL(P2 || M) = ln 1.5.
  p = jnp.asarray([[0.5, 0.5]])
  p2 = jnp.asarray([[1.0, 0.0]])
  mask = jnp.asarray([True])
  value = alignment.jensen_shannon([p, p, p2], mask)
  np.testing.assert_allclose(value, math.log(1.6875) / 3, rtol=1e-6)
  gradient = jax.grad(lambda q: alignment.jensen_shannon([p, p, q], mask))(p2)
  assert np.all(np.isfinite(gradient))


def test_jensen_shannon_zero_when_equal():
  p = jax.nn.softmax(jax.random.normal(KEY, (4, 3)))
  mask = jnp.asarray([True, True, True, False])
  value = alignment.jensen_shannon([p, p, p], mask)
  np.testing.assert_allclose(value, 0.0, atol=1e-7)


def test_representation_mse_hand_value():
  h = jnp.asarray([[1.0, 2.0], [0.0, 0.0], [9.0, 9.0]])
  h1 = jnp.asarray([[2.0, 4.0], [1.0, 1.0], [0.0, 0.0]])
  mask = jnp.asarray([True, True, False])
  # Rows: (1 + 4) / 2 = 2.5 and (1 + 1) / 2 = 1, the third is padding.
  value = alignment.representation_mse(h1, h, mask)
  np.testing.assert_allclose(value, 1.75, rtol=1e-6)


def _images(seed=0, size=4):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(size=(size, 8, 8, 1)), jnp.float32)


def test_mix_style_lambda_one_returns_input():
  x = _images()
  mean, std = fedalign_style.instance_statistics(x)
  target_mean, target_std = fedalign_style.instance_statistics(_images(seed=1))
  out = fedalign_style.mix_style(
    x,
    mean[:, None, None],
    std[:, None, None],
    target_mean[:, None, None],
    target_std[:, None, None],
    jnp.ones((4, 1, 1, 1)),
  )
  np.testing.assert_allclose(out, x, atol=1e-6)


def test_mix_style_lambda_zero_gives_target():
  x = _images()
  mean, std = fedalign_style.instance_statistics(x)
  target_mean = jnp.asarray([[0.1], [0.5], [0.9], [0.3]])
  target_std = jnp.asarray([[0.05], [0.2], [0.4], [1.0]])
  out = fedalign_style.mix_style(
    x,
    mean[:, None, None],
    std[:, None, None],
    target_mean[:, None, None],
    target_std[:, None, None],
    jnp.zeros((4, 1, 1, 1)),
  )
  np.testing.assert_allclose(out.mean(axis=(1, 2)), target_mean, atol=1e-6)
  # The std matches up to the epsilon under the square root: the factor
  # sqrt(var / (var + 1e-6)) differs from 1 by about 1e-5 here.
  np.testing.assert_allclose(out.std(axis=(1, 2)), target_std, rtol=1e-4)


def test_cross_client_sampling_skips_own_entries():
  valid = jnp.asarray(
    [
      [True, True, False],
      [True, False, False],
      [True, True, True],
      [False, False, False],
    ]
  )
  owner = np.repeat(np.arange(4), 3)
  for client_id in range(4):
    indices, found = fedalign_style.sample_style_indices(
      jax.random.fold_in(KEY, client_id), valid, client_id, 2000
    )
    indices = np.asarray(indices)
    assert bool(found)
    assert np.all(owner[indices] != client_id)
    assert np.all(np.asarray(valid).reshape(-1)[indices])
    expected = set(np.flatnonzero(np.asarray(valid).reshape(-1)))
    expected -= set(np.flatnonzero(owner == client_id))
    assert set(indices.tolist()) == expected


def test_cross_client_sampling_without_others():
  valid = jnp.asarray([[True, True], [False, False]])
  _, found = fedalign_style.sample_style_indices(KEY, valid, 0, 8)
  assert not bool(found)


def test_in_batch_partners_derangement():
  mask = jnp.asarray([True] * 5 + [False] * 3)
  for seed in range(5):
    partners = np.asarray(
      fedalign_style.in_batch_partners(jax.random.PRNGKey(seed), mask)
    )
    assert sorted(partners[:5].tolist()) == [0, 1, 2, 3, 4]
    assert np.all(partners[:5] != np.arange(5))
    np.testing.assert_array_equal(partners[5:], [5, 6, 7])


def test_build_style_pool_uses_real_rows():
  rng = np.random.default_rng(0)
  x = np.zeros((2, 5, 4, 4, 1), np.float32)
  x[0, :5] = rng.uniform(size=(5, 4, 4, 1))
  x[1, :3] = rng.uniform(size=(3, 4, 4, 1)) + 2.0
  pool = fedalign_style.build_style_pool(
    jnp.asarray(x), jnp.asarray([5, 3]), KEY, style_fraction=0.5
  )
  # ceil(0.5 * 5) = 3 slots; client 1 fills ceil(0.5 * 3) = 2 of them.
  np.testing.assert_array_equal(
    pool.valid, [[True, True, True], [True, True, False]]
  )
  for k, n in ((0, 5), (1, 3)):
    row_means = x[k, :n].mean(axis=(1, 2, 3))
    for entry in range(int(pool.valid[k].sum())):
      assert np.min(np.abs(row_means - pool.mean[k, entry, 0])) < 1e-6


def test_build_style_pool_tabular_per_site():
  x = np.zeros((2, 4, 3), np.float32)
  x[0] = [[0, 1, 2], [2, 3, 4], [4, 5, 6], [6, 7, 8]]
  x[1, :2] = [[1, 1, 1], [3, 3, 3]]
  pool = fedalign_style.build_style_pool(
    jnp.asarray(x), jnp.asarray([4, 2]), KEY, style_fraction=1.0
  )
  assert pool.mean.shape == (2, 1, 3)
  np.testing.assert_allclose(pool.mean[:, 0], [[3, 4, 5], [2, 2, 2]])
  np.testing.assert_allclose(
    pool.std[:, 0], np.sqrt([[5, 5, 5], [1, 1, 1]]), rtol=1e-5
  )


def _augment(style_source, x, pool, key):
  config = fedalign.FedAlignConfig(style_source=style_source)
  augment = fedalign.make_augment(config, image=True)
  return augment(x, jnp.ones(x.shape[0], bool), key, pool, 0)


def test_in_batch_and_cross_client_differ():
  x = _images(size=6)
  other = _images(seed=2, size=6) * 0.2 + 0.7
  mean, std = fedalign_style.instance_statistics(other)
  pool = fedalign_style.StylePool(
    mean=jnp.stack([mean, mean]),
    std=jnp.stack([std, std]),
    valid=jnp.asarray([[False] * 6, [True] * 6]),
  )
  in_batch = _augment("in_batch", x, pool, KEY)
  cross = _augment("cross_client", x, pool, KEY)
  assert not np.allclose(in_batch, cross, atol=1e-3)
  # Cross-client targets come from `other`, whose means lie in [0.7, 0.9].
  # Every row's mean is a convex mix of its own mean and such a target.
  own_mean, _ = fedalign_style.instance_statistics(x)
  cross_mean, _ = fedalign_style.instance_statistics(cross)
  assert np.all(cross_mean >= np.minimum(own_mean, 0.7) - 1e-5)
  assert np.all(cross_mean <= np.maximum(own_mean, 0.9) + 1e-5)


def _tabular_setup(sizes=(30, 12, 25, 19)):
  data = toy.random_binary_data(list(sizes))
  model = get_model("mlp", num_classes=2, feature_shape=(5,), hidden_sizes=(8,))
  variables = model.init(KEY, jnp.zeros((1, 5)))
  return data, model, variables


def _client(lr, steps=3, batch=8):
  return fedavg_lib.ClientConfig(
    learning_rate=lr,
    num_local_steps=steps,
    batch_size=batch,
    loss_fn=cross_entropy,
  )


def _fedalign(data, model, config, lr=0.1, clients_per_round=4, chunk=None):
  return fedalign.fedalign(
    model,
    data.num_clients,
    max_examples=data.train.max_examples,
    feature_shape=data.feature_shape,
    client=_client(lr),
    cohort=fedavg_lib.CohortConfig(
      clients_per_round=clients_per_round, clients_per_chunk=chunk
    ),
    config=config,
  )


def _run(algorithm, data, variables, rounds, seed=0):
  state = algorithm.init(KEY, variables)
  run_round = jax.jit(algorithm.run_round)
  for r in range(rounds):
    state, _ = run_round(
      state, data, jax.random.fold_in(jax.random.PRNGKey(seed), r)
    )
  return state


_OFF = fedalign.FedAlignConfig(
  mix_probability=0.0, supcon_weight=0.0, js_weight=0.0, consistency_weight=0.0
)


def test_no_terms_no_mixing_is_fedavg_triple_rate():
  # Without MixStyle both views equal x, so L = 3 CE(x): SGD at rate 0.1
  # on L takes FedAvg's steps at rate 0.3.
  data, model, variables = _tabular_setup()
  aligned = _run(_fedalign(data, model, _OFF, lr=0.1), data, variables, 2)
  plain = fedavg_lib.fedavg(
    model,
    data.num_clients,
    client=_client(0.3),
    cohort=fedavg_lib.CohortConfig(clients_per_round=4),
  )
  reference = _run(plain, data, variables, 2)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    aligned.params,
    reference.params,
  )


@pytest.mark.parametrize(
  "field", ["supcon_weight", "js_weight", "consistency_weight"]
)
def test_each_term_changes_gradient(field):
  data, model, variables = _tabular_setup()
  pool = fedalign_style.build_style_pool(
    jnp.asarray(data.train.x), jnp.asarray(data.train.num_examples), KEY, 0.5
  )
  x = jnp.asarray(data.train.x[0, :8])
  y = jnp.asarray(data.train.y[0, :8])
  mask = jnp.ones(8, bool)

  def gradient(config):
    objective = fedalign.make_objective(
      model, config, cross_entropy, image=False
    )(pool, 0)
    return jax.grad(lambda p: objective(p, {}, x, y, mask, KEY)[0])(
      variables["params"]
    )

  mixing = _OFF._replace(mix_probability=1.0)
  base = gradient(mixing)
  changed = gradient(mixing._replace(**{field: 0.5}))
  kernel = changed["Dense_0"]["kernel"]
  assert not np.allclose(kernel, base["Dense_0"]["kernel"], atol=1e-6)
  if field == "supcon_weight":
    return
  # Without MixStyle the views equal x, so the JS and MSE terms are 0.
  unmixed = gradient(_OFF)
  unmixed_with_term = gradient(_OFF._replace(**{field: 0.5}))
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
    unmixed,
    unmixed_with_term,
  )


def _digits_setup():
  data = load_dataset(
    "digits_multidomain",
    domains=("clean", "inverted", "blur"),
    examples_per_site=30,
  )
  model = get_model(
    "cnn", num_classes=10, feature_shape=(8, 8, 1), channels=(4,)
  )
  variables = model.init(KEY, jnp.zeros((1, 8, 8, 1)))
  return data, model, variables


def test_round_compiles_once():
  data, model, variables = _digits_setup()
  algorithm = _fedalign(
    data, model, fedalign.FedAlignConfig(), clients_per_round=2, chunk=1
  )
  traces = []

  def counted(state, data, key):
    traces.append(1)
    return algorithm.run_round(state, data, key)

  run_round = jax.jit(counted)
  state = algorithm.init(KEY, variables)
  for r in range(3):
    state, metrics = run_round(state, data, jax.random.fold_in(KEY, r))
  assert len(traces) == 1
  assert np.isfinite(float(metrics["train_loss"]))
  assert bool(jnp.all(state.extra.valid.sum(axis=1) == 3))


def test_same_seed_gives_identical_bits():
  data, model, variables = _digits_setup()
  algorithm = _fedalign(
    data,
    model,
    fedalign.FedAlignConfig(style_source="in_batch"),
    clients_per_round=3,
  )
  first = _run(algorithm, data, variables, 2)
  second = _run(algorithm, data, variables, 2)
  jax.tree.map(np.testing.assert_array_equal, first, second)
  other = _run(algorithm, data, variables, 2, seed=1)
  assert not np.array_equal(
    first.params["Dense_0"]["kernel"], other.params["Dense_0"]["kernel"]
  )


@pytest.mark.parametrize(
  "changes, message",
  [
    ({"style_source": "global"}, "style_source='global'"),
    ({"style_fraction": 0.0}, "style_fraction=0.0"),
    ({"mix_alpha": -1.0}, "mix_alpha=-1.0"),
    ({"mix_probability": 2.0}, "mix_probability=2.0"),
    ({"js_weight": -0.1}, "js_weight=-0.1"),
    ({"temperature": 0.0}, "temperature=0.0"),
    ({"style_source": "in_batch"}, "tabular rows have none"),
  ],
)
def test_bad_settings_raise(changes, message):
  data, model, _ = _tabular_setup()
  config = fedalign.FedAlignConfig()._replace(**changes)
  with pytest.raises(ValueError, match=message):
    _fedalign(data, model, config)


def test_model_without_features_raises():
  data, _, _ = _tabular_setup()
  model = get_model(
    "logistic_regression", num_classes=2, feature_shape=(5,), library="haiku"
  )
  with pytest.raises(ValueError, match="apply_features"):
    _fedalign(data, model, fedalign.FedAlignConfig())


def _config(num_rounds, checkpoint_every):
  config = fed_heart_disease_fedalign.get_config()
  config.num_rounds = num_rounds
  config.eval_every = 3
  config.checkpoint_every = checkpoint_every
  config.progress_bar = False
  return config


def _checkpoint_state(workdir, round_index):
  config = _config(6, 3)
  data = experiment.load_data(config)
  model = experiment.build_model(config, data)
  from fedjax_med.algorithms.registry import build_algorithm

  algorithm = build_algorithm(config, model, data)
  state_like = algorithm.init(KEY, model.init(KEY, data.train.x[0, :1]))
  checkpointer = Checkpointer(str(workdir))
  state, _ = checkpointer.restore(round_index, state_like, KEY)
  checkpointer.close()
  return state


def test_resume_equals_uninterrupted_run(tmp_path):
  straight = tmp_path / "straight"
  experiment.run_experiment(_config(6, 6), str(straight))
  resumed = tmp_path / "resumed"
  experiment.run_experiment(_config(3, 3), str(resumed))
  experiment.run_experiment(_config(6, 3), str(resumed), resume=True)
  a = _checkpoint_state(straight, 6)
  b = _checkpoint_state(resumed, 6)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert int(b.round) == 6
