"""The CLIP-format loader on tiny checkpoints that the tests write."""

import json

import numpy as np
import pytest

from fedjax_med.models import clip_loader

safetensors_numpy = pytest.importorskip("safetensors.numpy")

CONFIG = {
  "projection_dim": 6,
  "text_config": {
    "hidden_size": 8,
    "intermediate_size": 12,
    "num_hidden_layers": 2,
    "vocab_size": 20,
    "max_position_embeddings": 7,
  },
  "vision_config": {
    "hidden_size": 10,
    "intermediate_size": 16,
    "num_hidden_layers": 1,
    "image_size": 8,
    "patch_size": 4,
    "num_channels": 3,
  },
}


def _tensors(seed=0):
  config = clip_loader.read_clip_config_from_dict(CONFIG)
  rng = np.random.default_rng(seed)
  return {
    name: rng.normal(size=shape).astype(np.float32)
    for name, shape in clip_loader.expected_shapes(config).items()
  }


def _write(directory, tensors, config=CONFIG):
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "config.json").write_text(json.dumps(config))
  safetensors_numpy.save_file(tensors, str(directory / "model.safetensors"))
  return directory


def test_round_trip_layout(tmp_path):
  tensors = _tensors()
  tensors["text_model.embeddings.position_ids"] = np.arange(7)[None]
  params, config = clip_loader.load_clip_params(_write(tmp_path, tensors))
  assert config.text.num_hidden_layers == 2
  assert config.vision.hidden_size == 10

  text = params["text_model"]
  q_proj = text["encoder"]["layers"]["1"]["self_attn"]["q_proj"]
  np.testing.assert_array_equal(
    q_proj["kernel"],
    tensors["text_model.encoder.layers.1.self_attn.q_proj.weight"].T,
  )
  np.testing.assert_array_equal(
    q_proj["bias"], tensors["text_model.encoder.layers.1.self_attn.q_proj.bias"]
  )
  np.testing.assert_array_equal(
    text["final_layer_norm"]["scale"],
    tensors["text_model.final_layer_norm.weight"],
  )
  np.testing.assert_array_equal(
    text["embeddings"]["token_embedding"]["embedding"],
    tensors["text_model.embeddings.token_embedding.weight"],
  )
  assert "position_ids" not in text["embeddings"]

  vision = params["vision_model"]
  patch = vision["embeddings"]["patch_embedding"]["kernel"]
  # [out, in, h, w] -> [h, w, in, out]: kernel[h, w, i, o] = weight[o, i, h, w].
  weight = tensors["vision_model.embeddings.patch_embedding.weight"]
  assert patch.shape == (4, 4, 3, 10)
  np.testing.assert_array_equal(patch[1, 2, 0, 5], weight[5, 0, 1, 2])
  np.testing.assert_array_equal(
    vision["pre_layrnorm"]["bias"], tensors["vision_model.pre_layrnorm.bias"]
  )
  assert params["visual_projection"]["kernel"].shape == (10, 6)
  np.testing.assert_array_equal(params["logit_scale"], tensors["logit_scale"])

  # Every tensor appears exactly once in the tree.
  leaves = []

  def collect(node):
    for value in node.values():
      if isinstance(value, dict):
        collect(value)
      else:
        leaves.append(value)

  collect(params)
  assert len(leaves) == len(tensors) - 1


def test_sharded_checkpoint(tmp_path):
  tensors = _tensors()
  names = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": names[::2]}
  shards["model-00002-of-00002.safetensors"] = names[1::2]
  weight_map = {}
  for file, members in shards.items():
    safetensors_numpy.save_file(
      {n: tensors[n] for n in members}, str(tmp_path / file)
    )
    weight_map.update({n: file for n in members})
  (tmp_path / "model.safetensors.index.json").write_text(
    json.dumps({"weight_map": weight_map})
  )
  (tmp_path / "config.json").write_text(json.dumps(CONFIG))
  params, _ = clip_loader.load_clip_params(tmp_path)
  np.testing.assert_array_equal(
    params["text_projection"]["kernel"], tensors["text_projection.weight"].T
  )


def test_float16_is_cast(tmp_path):
  tensors = {k: v.astype(np.float16) for k, v in _tensors().items()}
  params, _ = clip_loader.load_clip_params(_write(tmp_path, tensors))
  assert params["logit_scale"].dtype == np.float32


def test_missing_directory_raises(tmp_path):
  missing = tmp_path / "no_such_clip"
  with pytest.raises(FileNotFoundError, match="no_such_clip does not exist"):
    clip_loader.load_clip_params(missing)


def test_missing_files_raise(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json is missing"):
    clip_loader.load_clip_params(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps(CONFIG))
  with pytest.raises(FileNotFoundError, match="has neither model.safetensors"):
    clip_loader.load_clip_params(tmp_path)


def test_config_without_size_raises(tmp_path):
  config = json.loads(json.dumps(CONFIG))
  del config["vision_config"]["patch_size"]
  _write(tmp_path, _tensors(), config)
  with pytest.raises(ValueError, match="is missing vision_config.patch_size"):
    clip_loader.load_clip_params(tmp_path)


def test_wrong_shape_raises(tmp_path):
  tensors = _tensors()
  tensors["text_projection.weight"] = np.zeros((5, 8), np.float32)
  with pytest.raises(ValueError, match=r"text_projection.weight: \(5, 8\)"):
    clip_loader.load_clip_params(_write(tmp_path, tensors))


def test_missing_tensor_raises(tmp_path):
  tensors = _tensors()
  del tensors["vision_model.post_layernorm.bias"]
  tensors["extra.weight"] = np.zeros(2, np.float32)
  with pytest.raises(ValueError, match="1 missing tensors") as error:
    clip_loader.load_clip_params(_write(tmp_path, tensors))
  assert "vision_model.post_layernorm.bias" in str(error.value)
  assert "1 unexpected tensors ['extra.weight']" in str(error.value)
