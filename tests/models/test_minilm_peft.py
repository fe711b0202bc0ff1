"""Tests for LoRA, soft prompts and SCL on the pretrained MiniLM encoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from fedjax_med.models import get_model
from fedjax_med.models.text import (
  ADAPTER_NAMES,
  LoRADense,
  MiniLMEncoder,
  PEFTConfig,
  SequentialCompression,
  count_params,
  load_pretrained_params,
  minilm_classifier,
  split_tokens,
  tokenize,
)

SENTENCES = [
  "A 54-year-old woman with non-anginal pain.",
  "Resting blood pressure 130 mm Hg, serum cholesterol 250 mg/dl.",
  "No exercise-induced angina.",
]
NUM_LAYERS = 1


@pytest.fixture(scope="module")
def pretrained():
  return load_pretrained_params(NUM_LAYERS)


@pytest.fixture(scope="module")
def tokens():
  return jnp.asarray(tokenize(SENTENCES, max_length=16))


def _base_embeddings(pretrained, tokens):
  ids, mask = split_tokens(tokens)
  encoder = MiniLMEncoder(num_layers=NUM_LAYERS)
  return encoder.apply({"params": pretrained}, ids, mask)


def _features(model, variables, tokens):
  _, features, _ = model.apply_features(variables, tokens)
  return features


@pytest.mark.parametrize("method", ["lora", "scl", "full"])
def test_initial_adapters_keep_base_embeddings(method, pretrained, tokens):
  model = minilm_classifier(
    1,
    peft=PEFTConfig(method=method),
    num_layers=NUM_LAYERS,
    pretrained=pretrained,
  )
  variables = model.init(jax.random.key(0), tokens)
  np.testing.assert_array_equal(
    _features(model, variables, tokens), _base_embeddings(pretrained, tokens)
  )


def test_prompts_change_embeddings(pretrained, tokens):
  model = minilm_classifier(
    1,
    peft=PEFTConfig(method="prompt", num_prompts=4),
    num_layers=NUM_LAYERS,
    pretrained=pretrained,
  )
  variables = model.init(jax.random.key(0), tokens)
  assert variables["params"]["encoder"]["prompt"].shape == (4, 384)
  features = _features(model, variables, tokens)
  base = _base_embeddings(pretrained, tokens)
  assert features.shape == base.shape
  assert np.max(np.abs(features - base)) > 1e-4
  np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("method", ["lora", "prompt", "scl"])
def test_trainable_tree_holds_adapters_and_head(method, pretrained, tokens):
  model = minilm_classifier(
    1,
    peft=PEFTConfig(method=method),
    num_layers=NUM_LAYERS,
    pretrained=pretrained,
  )
  variables = model.init(jax.random.key(0), tokens)
  assert list(variables) == ["params"]
  paths = list(traverse_util.flatten_dict(variables["params"]))
  assert ("head", "kernel") in paths
  adapters = [p for p in paths if p[0] != "head"]
  assert adapters
  for path in adapters:
    assert path[-1] in ADAPTER_NAMES, path


def test_lora_param_count_closed_form(pretrained, tokens):
  rank = 4
  peft = PEFTConfig(lora_rank=rank, lora_targets=("query", "value"))
  model = minilm_classifier(
    1, peft=peft, num_layers=NUM_LAYERS, pretrained=pretrained
  )
  variables = model.init(jax.random.key(0), tokens)
  # Two adapted 384x384 layers per transformer layer, plus a 384->1 head.
  expected = NUM_LAYERS * 2 * (384 * rank + rank * 384) + 384 + 1
  assert count_params(variables) == expected


def test_scl_down_projection_option(pretrained, tokens):
  peft = PEFTConfig(method="scl", scl_rank=8, scl_train_down_projection=True)
  model = minilm_classifier(
    1, peft=peft, num_layers=NUM_LAYERS, pretrained=pretrained
  )
  params = model.init(jax.random.key(0), tokens)["params"]
  layer = params["encoder"]["layer_0"]
  assert layer["scl"]["scl_w1"].shape == (1536, 8)
  assert layer["scl"]["scl_w2"].shape == (8, 1536)
  assert layer["output"]["kernel"].shape == (1536, 384)
  assert "attention" not in layer


def test_full_finetuning_trains_everything(pretrained, tokens):
  model = minilm_classifier(
    1,
    peft=PEFTConfig(method="full"),
    num_layers=NUM_LAYERS,
    pretrained=pretrained,
  )
  params = model.init(jax.random.key(0), tokens)["params"]
  expected = count_params(pretrained) + 384 + 1
  assert count_params(params) == expected
  np.testing.assert_array_equal(
    params["encoder"]["layer_0"]["attention"]["query"]["kernel"],
    pretrained["layer_0"]["attention"]["query"]["kernel"],
  )


def test_full_model_sends_50x_more_than_lora():
  # Sizes only, from the shapes of the six-layer checkpoint.
  sample = jax.ShapeDtypeStruct((1, 2, 64), jnp.float32)
  counts = {}
  for method in ("full", "lora"):
    model = get_model(
      "minilm", num_classes=2, feature_shape=(2, 64), peft=method
    )
    shapes = jax.eval_shape(model.init, jax.random.key(0), sample)
    counts[method] = count_params(shapes)
  assert counts["full"] > 22_000_000
  assert counts["full"] >= 50 * counts["lora"]


def test_lora_dense_closed_form():
  layer = LoRADense(3, rank=2, alpha=4.0)
  x = jax.random.normal(jax.random.key(1), (5, 6))
  params = layer.init(jax.random.key(0), x)["params"]
  params = dict(params, lora_b=jnp.ones((2, 3)))
  expected = (
    x @ params["kernel"]
    + params["bias"]
    + 2.0 * (x @ params["lora_a"]) @ params["lora_b"]
  )
  np.testing.assert_allclose(
    layer.apply({"params": params}, x), expected, rtol=1e-5, atol=1e-6
  )


def test_scl_closed_form():
  layer = SequentialCompression(rank=2)
  h = jax.random.normal(jax.random.key(1), (4, 6))
  params = layer.init(jax.random.key(0), h)["params"]
  np.testing.assert_array_equal(layer.apply({"params": params}, h), h)
  params = dict(params, scl_w2=jnp.full((2, 6), 0.5))
  expected = (
    h
    + jax.nn.gelu(h @ params["scl_w1"], approximate=False) @ (params["scl_w2"])
  )
  np.testing.assert_allclose(
    layer.apply({"params": params}, h), expected, rtol=1e-5, atol=1e-6
  )


@pytest.mark.parametrize(
  "options,match",
  [
    ({"method": "adapter"}, "peft method='adapter'"),
    ({"lora_targets": ("gate",)}, r"lora_targets \['gate'\]"),
    ({"lora_rank": 0}, "lora_rank=0"),
  ],
)
def test_peft_config_rejects_invalid(options, match):
  with pytest.raises(ValueError, match=match):
    PEFTConfig(**options)


def test_registry_rejects_tabular_shape():
  with pytest.raises(ValueError, match=r"\(2, seq_len\)"):
    get_model("minilm", num_classes=2, feature_shape=(13,))
