"""Federated fine-tuning of the pretrained MiniLM encoder through FedAvg.

The adapters and the head are the model's only parameters, so the FedAvg
round trains, aggregates, privatizes and counts exactly those leaves. The
pretrained weights stay those of the checkpoint.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from configs import fed_heart_disease
from fedjax_med.algorithms import registry
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.models.text import (
  ADAPTER_NAMES,
  MiniLMEncoder,
  PEFTConfig,
  count_params,
  load_pretrained_params,
  minilm_classifier,
  split_tokens,
)

NUM_LAYERS = 1
SEQ_LEN = 8
# Client 2 has no rows, so 3 of the 4 sampled clients send a delta.
SIZES = (3, 2, 0, 2)
KEY = jax.random.PRNGKey(0)


def _token_data() -> FederatedData:
  rng = np.random.default_rng(0)
  clients = []
  for n in SIZES:
    lengths = rng.integers(3, SEQ_LEN + 1, size=n)
    ids = rng.integers(1000, 2000, size=(n, SEQ_LEN))
    mask = (np.arange(SEQ_LEN)[None, :] < lengths[:, None]).astype(np.int64)
    ids[:, 0] = 101
    x = np.stack([ids * mask, mask], axis=1).astype(np.float32)
    clients.append((x, rng.integers(0, 2, size=n).astype(np.int32)))
  return FederatedData.from_clients(
    clients, clients, num_classes=2, name="synthetic_tokens"
  )


def _config(**privacy) -> ml_collections.ConfigDict:
  config = fed_heart_disease.get_config()
  config.client.optimizer = "adam"
  config.client.learning_rate = 0.01
  config.client.num_local_steps = 1
  config.client.batch_size = 2
  config.privacy.update(privacy)
  return config


@pytest.fixture(scope="module")
def pretrained():
  return load_pretrained_params(NUM_LAYERS)


@pytest.fixture(scope="module")
def data():
  return _token_data()


def _model(pretrained, method="lora"):
  peft = PEFTConfig(method=method, lora_rank=2, num_prompts=2, scl_rank=4)
  return minilm_classifier(
    1, peft=peft, num_layers=NUM_LAYERS, pretrained=pretrained
  )


def _run(config, model, data, rounds):
  algorithm = registry.build_algorithm(config, model, data)
  variables = model.init(KEY, jnp.asarray(data.train.x[0, :1]))
  traces = []

  def counted(state, data, key):
    traces.append(1)
    return algorithm.run_round(state, data, key)

  run_round = jax.jit(counted)
  state = algorithm.init(KEY, variables)
  history = []
  for r in range(rounds):
    state, metrics = run_round(state, data, jax.random.fold_in(KEY, r))
    history.append(jax.device_get(metrics))
  return variables, state, history, traces


@pytest.mark.slow
def test_lora_rounds(pretrained, data):
  # One run for every check, because under pytest-xdist a module fixture
  # would train once per worker.
  model = _model(pretrained)
  variables, state, history, traces = _run(_config(), model, data, rounds=2)

  # The round compiles once.
  assert len(traces) == 1
  assert int(state.round) == 2

  # The state holds only the adapters and the head, and B has moved.
  assert jax.tree.structure(state.params) == jax.tree.structure(
    variables["params"]
  )
  assert state.model_state == {}
  for path in traverse_util.flatten_dict(state.params):
    assert path[0] == "head" or path[-1] in ADAPTER_NAMES, path
  lora_b = state.params["encoder"]["layer_0"]["attention"]["query"]["lora_b"]
  assert np.any(np.asarray(lora_b) != 0)

  # Bytes: 2 adapted layers of rank 2 on 384 features and the 385-weight
  # head; each sender sends the float32 delta and the float32 weight.
  trainable = count_params(variables["params"])
  assert trainable == 2 * 2 * (2 * 384) + 385
  senders = sum(n > 0 for n in SIZES)
  for metrics in history:
    assert int(metrics["uplink_bytes"]) == senders * (4 * trainable + 4)
    assert int(metrics["downlink_bytes"]) == len(SIZES) * 4 * trainable

  # With every B set back to zero the LoRA terms vanish, so what remains is
  # the frozen encoder, which must still be the checkpoint's.
  flat = traverse_util.flatten_dict(state.params)
  flat = {
    k: jnp.zeros_like(v) if k[-1] == "lora_b" else v for k, v in flat.items()
  }
  params = traverse_util.unflatten_dict(flat)
  x = jnp.asarray(data.train.x[0])
  _, features, _ = model.apply_features({"params": params}, x)
  ids, mask = split_tokens(x)
  base = MiniLMEncoder(num_layers=NUM_LAYERS).apply(
    {"params": pretrained}, ids, mask
  )
  np.testing.assert_allclose(features, base, atol=1e-6)


@pytest.mark.slow
def test_dp_secure_sum_over_adapters(pretrained, data):
  config = _config(
    mode="client",
    clip_norm=0.1,
    noise_multiplier=0.0,
    calibrate_noise=False,
    secure_aggregation=True,
    secagg_bits=32,
  )
  config.cohort.weighting = "uniform"
  model = _model(pretrained)
  variables, state, history, traces = _run(config, model, data, rounds=1)
  assert len(traces) == 1
  assert jax.tree.structure(state.params) == jax.tree.structure(
    variables["params"]
  )
  # Each clipped delta has norm <= 0.1, so their mean moves the adapters
  # and the head by at most 0.1 in norm.
  change = jax.tree.map(jnp.subtract, state.params, variables["params"])
  norm = float(jnp.sqrt(sum(jnp.sum(c**2) for c in jax.tree.leaves(change))))
  assert 0.0 < norm <= 0.1 + 1e-3
  trainable = count_params(variables["params"])
  assert int(history[0]["downlink_bytes"]) == len(SIZES) * 4 * trainable


@pytest.mark.slow
@pytest.mark.parametrize("method", ["prompt", "scl"])
def test_round_trains_only_adapters(method, pretrained, data):
  model = _model(pretrained, method)
  variables, state, history, _ = _run(_config(), model, data, rounds=1)
  assert jax.tree.structure(state.params) == jax.tree.structure(
    variables["params"]
  )
  for path in traverse_util.flatten_dict(state.params):
    assert path[0] == "head" or path[-1] in ADAPTER_NAMES, path
  trainable = count_params(variables["params"])
  senders = sum(n > 0 for n in SIZES)
  assert int(history[0]["uplink_bytes"]) == senders * (4 * trainable + 4)
  # The zero-initialized W2 gets a gradient at the first step; W1 does not
  # until W2 has moved, as LoRA's A waits for B.
  first_moving = "prompt" if method == "prompt" else "scl_w2"
  before = traverse_util.flatten_dict(variables["params"])
  for path, value in traverse_util.flatten_dict(state.params).items():
    if path[-1] == first_moving:
      assert np.any(np.asarray(value) != np.asarray(before[path])), path
