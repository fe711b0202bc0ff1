"""CoOp on the small towers, the federated prompt round and base/new split."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med import losses
from fedjax_med.algorithms.fedavg import ClientConfig, CohortConfig
from fedjax_med.algorithms.prompt_learning import federated_prompt_learning
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.models import dual_encoder as dual
from fedjax_med.models.small_towers import (
  CLS_ID,
  PAD_ID,
  SEP_ID,
  UNK_ID,
  WordTokenizer,
  small_dual_encoder,
)
from fedjax_med.prompts import base_new
from fedjax_med.prompts.coop import CoOpConfig, coop
from fedjax_med.prompts.learner import insert_context, prompt_model

KEY = jax.random.PRNGKey(0)
NAMES = dual.DIGIT_NAMES[:3]


@pytest.fixture(scope="module")
def towers():
  return small_dual_encoder(KEY)


def _images(n, seed=1):
  return jax.random.uniform(jax.random.PRNGKey(seed), (n, 8, 8, 1))


def test_tokenizer_layout():
  tokenizer = WordTokenizer(["a photo of the digit three."])
  ids, mask = tokenizer(["the digit three.", "unknown"], 8)
  digit = tokenizer.vocabulary.index("digit")
  three = tokenizer.vocabulary.index("three")
  the = tokenizer.vocabulary.index("the")
  period = tokenizer.vocabulary.index(".")
  assert ids[0].tolist() == [CLS_ID, the, digit, three, period, SEP_ID, 0, 0]
  assert ids[1].tolist()[:3] == [CLS_ID, UNK_ID, SEP_ID]
  assert ids[1].tolist()[3:] == [PAD_ID] * 5
  np.testing.assert_array_equal(mask.sum(axis=1), [6, 3])


def test_text_features_ignore_padding(towers):
  encoder, params = towers
  short = dual.encode_texts(encoder, params, ["the digit two."], 8)
  long = dual.encode_texts(encoder, params, ["the digit two."], 16)
  np.testing.assert_allclose(short, long, atol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(long, axis=-1), 1.0, rtol=1e-5)


def test_zero_context_equals_zero_shot(towers):
  encoder, params = towers
  learner = coop(encoder, params, CoOpConfig(num_context=0))
  model = prompt_model(encoder, params, learner, NAMES)
  variables = model.init(KEY, None)
  assert variables["params"]["context"].shape == (0, encoder.token_width)
  logits, _ = jax.jit(model.apply)(variables, _images(5))
  expected = dual.zero_shot_logits(encoder, params, _images(5), NAMES, "{}.")
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-4)


def test_word_init_equals_template_prompt(towers):
  encoder, params = towers
  config = CoOpConfig(num_context=5, init_words="a photo of the digit")
  learner = coop(encoder, params, config)
  model = prompt_model(encoder, params, learner, NAMES)
  logits, _ = model.apply(model.init(KEY, None), _images(5))
  expected = dual.zero_shot_logits(encoder, params, _images(5), NAMES)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-4)


def test_word_init_length_mismatch_raises(towers):
  encoder, params = towers
  config = CoOpConfig(num_context=3, init_words="a photo of the digit")
  with pytest.raises(ValueError, match="has 5 tokens but num_context=3"):
    coop(encoder, params, config)


def test_gradient_reaches_only_context(towers):
  encoder, params = towers
  model = prompt_model(encoder, params, coop(encoder, params), NAMES)
  variables = model.init(KEY, None)
  labels = jnp.asarray([0, 1, 2, 0])

  def loss(variables):
    logits, _ = model.apply(variables, _images(4))
    return jnp.mean(losses.cross_entropy(logits, labels))

  loss = jax.jit(loss)
  grads = jax.jit(jax.grad(loss))(variables)
  assert list(grads) == ["params"]
  assert list(grads["params"]) == ["context"]
  assert float(jnp.linalg.norm(grads["params"]["context"])) > 0

  # A central difference along a random direction matches the gradient.
  direction = jax.random.normal(KEY, variables["params"]["context"].shape)
  eps = 1e-3

  def shifted(sign):
    context = variables["params"]["context"] + sign * eps * direction
    return loss({"params": {"context": context}})

  numeric = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
  analytic = jnp.vdot(grads["params"]["context"], direction)
  np.testing.assert_allclose(numeric, analytic, rtol=2e-2, atol=1e-4)


def test_insert_context_layout():
  embeddings = jnp.arange(2 * 3 * 1, dtype=jnp.float32).reshape(2, 3, 1)
  mask = jnp.asarray([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
  context = jnp.asarray([[-1.0], [-2.0]])
  out, out_mask = insert_context(embeddings, mask, context)
  np.testing.assert_array_equal(
    out[:, :, 0], [[0, -1, -2, 1, 2], [3, -1, -2, 4, 5]]
  )
  np.testing.assert_array_equal(out_mask, [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])


def test_class_specific_context(towers):
  encoder, params = towers
  config = CoOpConfig(num_context=2, class_specific=True, num_classes=3)
  learner = coop(encoder, params, config)
  variables = prompt_model(encoder, params, learner, NAMES).init(KEY, None)
  assert variables["params"]["context"].shape == (3, 2, encoder.token_width)
  other = prompt_model(encoder, params, learner, dual.DIGIT_NAMES[:4])
  with pytest.raises(ValueError, match="class-specific context has 3 rows"):
    other.apply(variables, _images(2))


def _image_data(num_clients=3, num_classes=4, per_client=24, seed=0):
  rng = np.random.default_rng(seed)
  clients = []
  for k in range(num_clients):
    n = per_client - 4 * k
    x = rng.uniform(size=(n, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, num_classes, size=n).astype(np.int32)
    clients.append((x, y))
  return FederatedData.from_clients(
    clients, clients, num_classes=num_classes, name="random_images"
  )


def test_prompt_round_traces_once_and_bytes(towers):
  encoder, params = towers
  data = base_new.select_classes(_image_data(), [0, 1, 2])
  learner = coop(encoder, params, CoOpConfig(num_context=4))
  algorithm, model = federated_prompt_learning(
    encoder,
    params,
    learner,
    NAMES,
    data.num_clients,
    client=ClientConfig(learning_rate=0.05, num_local_steps=2, batch_size=8),
    cohort=CohortConfig(clients_per_round=3),
  )
  variables = model.init(KEY, None)
  state = algorithm.init(KEY, variables)
  traces = []

  def counted(state, data, key):
    traces.append(1)
    return algorithm.run_round(state, data, key)

  run_round = jax.jit(counted)
  for r in range(3):
    state, metrics = run_round(state, data, jax.random.fold_in(KEY, r))
  assert len(traces) == 1

  context_bytes = 4 * 4 * encoder.token_width
  # Each of the 3 clients sends its context delta and one float32 weight.
  assert int(metrics["uplink_bytes"]) == 3 * (context_bytes + 4)
  assert int(metrics["downlink_bytes"]) == 3 * context_bytes
  moved = state.params["context"] - variables["params"]["context"]
  assert float(jnp.linalg.norm(moved)) > 0


def test_select_classes_relabels():
  data = _image_data()
  subset = base_new.select_classes(data, [3, 1])
  for k in range(data.num_clients):
    x, y = data.train.client(k)
    x_sub, y_sub = subset.train.client(k)
    keep = (y == 3) | (y == 1)
    np.testing.assert_array_equal(x_sub, x[keep])
    np.testing.assert_array_equal(y_sub, np.where(y[keep] == 3, 0, 1))
  with pytest.raises(ValueError, match="without repeats"):
    base_new.select_classes(data, [1, 1])
  with pytest.raises(ValueError, match=r"must lie in \[0, 4\)"):
    base_new.select_classes(data, [4])


def test_harmonic_mean():
  assert base_new.harmonic_mean(0.5, 0.5) == 0.5
  np.testing.assert_allclose(base_new.harmonic_mean(0.9, 0.3), 0.45)
  assert base_new.harmonic_mean(0.0, 0.0) == 0.0


def test_base_new_matches_direct_accuracy(towers):
  encoder, params = towers
  data = _image_data()
  learner = coop(encoder, params, CoOpConfig(num_context=2))
  prompt_params = learner.init(KEY)
  result = base_new.evaluate_base_new(
    encoder,
    params,
    learner,
    prompt_params,
    data,
    dual.DIGIT_NAMES[:4],
    base_classes=[0, 1],
    new_classes=[2, 3],
  )
  # New-class accuracy computed directly from the pooled test rows.
  x, y = data.test.pooled()
  keep = y >= 2
  model = prompt_model(encoder, params, learner, dual.DIGIT_NAMES[2:4])
  logits, _ = model.apply({"params": prompt_params}, jnp.asarray(x[keep]))
  direct = np.mean(np.argmax(logits, axis=-1) == y[keep] - 2)
  np.testing.assert_allclose(result["new"]["pooled"]["accuracy"], direct)
  np.testing.assert_allclose(
    result["harmonic_mean"],
    base_new.harmonic_mean(result["base"]["pooled"]["accuracy"], direct),
  )
