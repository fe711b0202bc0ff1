"""The FedTPG-style prompt generator and its federated round."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.algorithms.fedavg import ClientConfig, CohortConfig
from fedjax_med.algorithms.prompt_learning import federated_prompt_learning
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.models import dual_encoder as dual
from fedjax_med.models.small_towers import small_dual_encoder
from fedjax_med.prompts.generator import (
  GeneratorConfig,
  batch_style,
  prompt_generator,
  redundancy_penalty,
)
from fedjax_med.prompts.learner import prompt_model

KEY = jax.random.PRNGKey(0)
NAMES = dual.DIGIT_NAMES[:4]


@pytest.fixture(scope="module")
def towers():
  return small_dual_encoder(KEY)


def _images(n, seed=1):
  return jax.random.uniform(jax.random.PRNGKey(seed), (n, 8, 8, 1))


def test_context_shape_and_order_invariance(towers):
  encoder, params = towers
  learner = prompt_generator(encoder, params, GeneratorConfig(num_context=3))
  context_fn = jax.jit(learner.context)
  generator_params = learner.init(KEY)
  tokens = learner.prepare(NAMES)
  context = context_fn(generator_params, tokens, None)
  assert context.shape == (3, encoder.token_width)

  order = [2, 0, 3, 1]
  permuted = learner.prepare([NAMES[i] for i in order])
  np.testing.assert_allclose(
    context_fn(generator_params, permuted, None), context, atol=1e-5
  )

  # Listing the classes in another order permutes the logits' columns.
  model = prompt_model(encoder, params, learner, NAMES)
  permuted_model = prompt_model(
    encoder, params, learner, [NAMES[i] for i in order]
  )
  variables = {"params": generator_params}
  logits, _ = jax.jit(model.apply)(variables, _images(3))
  permuted_logits, _ = jax.jit(permuted_model.apply)(variables, _images(3))
  np.testing.assert_allclose(
    permuted_logits, logits[:, order], rtol=1e-4, atol=1e-4
  )


def test_context_depends_on_classes(towers):
  encoder, params = towers
  learner = prompt_generator(encoder, params)
  context_fn = jax.jit(learner.context)
  generator_params = learner.init(KEY)
  first = context_fn(generator_params, learner.prepare(NAMES[:2]), None)
  second = context_fn(generator_params, learner.prepare(NAMES[2:]), None)
  assert float(jnp.max(jnp.abs(first - second))) > 1e-4


def test_style_tokens_read_the_batch(towers):
  encoder, params = towers
  learner = prompt_generator(encoder, params, GeneratorConfig(use_style=True))
  context_fn = jax.jit(learner.context)
  generator_params = learner.init(KEY)
  assert "style_mean_projection" in generator_params
  tokens = learner.prepare(NAMES)
  features = encoder.encode_image(params, _images(6))
  same = context_fn(generator_params, tokens, features[::-1])
  context = context_fn(generator_params, tokens, features)
  other = context_fn(generator_params, tokens, features[:3])
  # Batch statistics do not depend on the order of the rows.
  np.testing.assert_allclose(same, context, atol=1e-5)
  assert float(jnp.max(jnp.abs(other - context))) > 1e-5


def test_batch_style_closed_form():
  features = jnp.asarray([[1.0, 0.0], [3.0, 2.0]])
  style = batch_style(features)
  np.testing.assert_allclose(style[0], [2.0, 1.0])
  np.testing.assert_allclose(style[1], np.sqrt([1.0 + 1e-6, 1.0 + 1e-6]))


def test_redundancy_penalty_by_hand():
  orthogonal = jnp.asarray([[2.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
  np.testing.assert_allclose(redundancy_penalty(orthogonal), 0.0, atol=1e-6)
  # Two equal rows: the Gram matrix is all ones, two off-diagonal ones.
  equal = jnp.asarray([[1.0, 1.0], [2.0, 2.0]])
  np.testing.assert_allclose(redundancy_penalty(equal), 2.0, rtol=1e-6)
  # Rows at 60 degrees: cos = 0.5 twice, so 2 * 0.25.
  sixty = jnp.asarray([[1.0, 0.0], [0.5, np.sqrt(3) / 2]])
  np.testing.assert_allclose(redundancy_penalty(sixty), 0.5, rtol=1e-5)


def test_style_with_redundancy_raises(towers):
  encoder, params = towers
  config = GeneratorConfig(use_style=True, redundancy_weight=0.1)
  with pytest.raises(ValueError, match="needs use_style=False"):
    prompt_generator(encoder, params, config)


def test_generator_round_traces_once_and_bytes(towers):
  encoder, params = towers
  rng = np.random.default_rng(0)
  clients = []
  for n in (16, 10):
    x = rng.uniform(size=(n, 8, 8, 1)).astype(np.float32)
    clients.append((x, rng.integers(0, 4, size=n).astype(np.int32)))
  data = FederatedData.from_clients(clients, clients, num_classes=4)
  config = GeneratorConfig(num_context=2, width=16, redundancy_weight=0.5)
  learner = prompt_generator(encoder, params, config)
  algorithm, model = federated_prompt_learning(
    encoder,
    params,
    learner,
    NAMES,
    data.num_clients,
    client=ClientConfig(learning_rate=0.05, num_local_steps=1, batch_size=8),
    cohort=CohortConfig(clients_per_round=2),
  )
  variables = model.init(KEY, None)
  state = algorithm.init(KEY, variables)
  traces = []

  def counted(state, data, key):
    traces.append(1)
    return algorithm.run_round(state, data, key)

  run_round = jax.jit(counted)
  for r in range(2):
    state, metrics = run_round(state, data, jax.random.fold_in(KEY, r))
  assert len(traces) == 1

  num_params = sum(x.size for x in jax.tree.leaves(variables["params"]))
  assert int(metrics["uplink_bytes"]) == 2 * (4 * num_params + 4)
  assert int(metrics["downlink_bytes"]) == 2 * 4 * num_params

  tokens = learner.prepare(NAMES)
  penalty = learner.penalty(variables["params"], tokens)
  context = learner.context(variables["params"], tokens, None)
  np.testing.assert_allclose(penalty, 0.5 * redundancy_penalty(context))
