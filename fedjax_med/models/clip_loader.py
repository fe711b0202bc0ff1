"""Reads CLIP weights in the Hugging Face format from a local directory.

The directory is what `transformers.CLIPModel.save_pretrained` writes:
`config.json` and either `model.safetensors` or a sharded checkpoint
(`model.safetensors.index.json` naming `model-*.safetensors` files). The
tensors are read with the `safetensors` package and never downloaded.

`load_clip_params` checks every tensor by name and shape against the sizes
in `config.json` and returns a nested dict in the layout of the parameters
of transformers' `FlaxCLIPModel` (transformers'
src/transformers/models/clip/modeling_flax_clip.py):

  text_model/embeddings/{token_embedding,position_embedding}/embedding
  text_model/encoder/layers/{i}/{self_attn/{q,k,v,out}_proj,
      mlp/{fc1,fc2}}/{kernel,bias}, .../{layer_norm1,layer_norm2}/{scale,bias}
  text_model/final_layer_norm/{scale,bias}
  vision_model/embeddings/{class_embedding, patch_embedding/kernel,
      position_embedding/embedding}
  vision_model/{pre_layrnorm,post_layernorm}/{scale,bias}
  vision_model/encoder/layers/{i}/... (as the text model's)
  text_projection/kernel, visual_projection/kernel, logit_scale

PyTorch's `Linear.weight [out, in]` becomes `kernel [in, out]`, the patch
convolution's `[out, in, height, width]` becomes `[height, width, in, out]`
(flax's `nn.Conv` layout), `LayerNorm.weight` becomes `scale` and
`Embedding.weight` becomes `embedding`. The `position_ids` buffers of older
checkpoints are skipped. The misspelt `pre_layrnorm` is the checkpoint's own
name.

NOTE: this module loads and validates the weights only. No flax CLIP forward
pass is implemented here, so the tree cannot yet fill a `DualEncoder`.
"""

from __future__ import annotations

import json
import pathlib
from typing import NamedTuple

import numpy as np

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_BUFFERS = (
  "text_model.embeddings.position_ids",
  "vision_model.embeddings.position_ids",
)


class TowerConfig(NamedTuple):
  """Sizes of one transformer tower, from `config.json`.

  Attributes:
    hidden_size: Token width.
    intermediate_size: Feed-forward width.
    num_hidden_layers: Transformer layers.
  """

  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int


class CLIPConfig(NamedTuple):
  """The sizes that fix every tensor's shape.

  Attributes:
    text: The text tower.
    vision: The vision tower.
    vocab_size: Rows of the token embedding.
    max_position_embeddings: Text positions.
    image_size: Side of the square input image, in pixels.
    patch_size: Side of a square patch, in pixels.
    num_channels: Image channels.
    projection_dim: Width of the shared embedding space.
  """

  text: TowerConfig
  vision: TowerConfig
  vocab_size: int
  max_position_embeddings: int
  image_size: int
  patch_size: int
  num_channels: int
  projection_dim: int


def _field(section: dict, key: str, where: str, source: str):
  if key not in section:
    raise ValueError(
      f"{source} is missing {where}{key}; CLIP-format weights need it to check "
      "the tensors' shapes. Save the model with "
      "transformers.CLIPModel.save_pretrained, which writes every size."
    )
  return int(section[key])


def read_clip_config(path: pathlib.Path) -> CLIPConfig:
  """Reads the sizes from a `config.json` file (see `CLIPConfig`)."""
  return read_clip_config_from_dict(json.loads(path.read_text()), str(path))


def read_clip_config_from_dict(
  raw: dict, source: str = CONFIG_FILE
) -> CLIPConfig:
  """Reads the sizes from a parsed `config.json`; `source` names it."""
  sections = {}
  for name in ("text_config", "vision_config"):
    if not isinstance(raw.get(name), dict):
      raise ValueError(
        f"{source} is missing the {name!r} object; a CLIPModel config.json "
        "holds text_config and vision_config."
      )
    sections[name] = raw[name]
  text, vision = sections["text_config"], sections["vision_config"]

  def tower(section, where):
    return TowerConfig(
      *(_field(section, key, where, source) for key in TowerConfig._fields)
    )

  return CLIPConfig(
    text=tower(text, "text_config."),
    vision=tower(vision, "vision_config."),
    vocab_size=_field(text, "vocab_size", "text_config.", source),
    max_position_embeddings=_field(
      text, "max_position_embeddings", "text_config.", source
    ),
    image_size=_field(vision, "image_size", "vision_config.", source),
    patch_size=_field(vision, "patch_size", "vision_config.", source),
    num_channels=int(vision.get("num_channels", 3)),
    projection_dim=_field(raw, "projection_dim", "", source),
  )


def _tower_shapes(prefix: str, tower: TowerConfig) -> dict:
  width, ff = tower.hidden_size, tower.intermediate_size
  shapes = {}
  for i in range(tower.num_hidden_layers):
    layer = f"{prefix}.encoder.layers.{i}"
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
      shapes[f"{layer}.self_attn.{proj}.weight"] = (width, width)
      shapes[f"{layer}.self_attn.{proj}.bias"] = (width,)
    for norm in ("layer_norm1", "layer_norm2"):
      shapes[f"{layer}.{norm}.weight"] = (width,)
      shapes[f"{layer}.{norm}.bias"] = (width,)
    shapes[f"{layer}.mlp.fc1.weight"] = (ff, width)
    shapes[f"{layer}.mlp.fc1.bias"] = (ff,)
    shapes[f"{layer}.mlp.fc2.weight"] = (width, ff)
    shapes[f"{layer}.mlp.fc2.bias"] = (width,)
  return shapes


def expected_shapes(config: CLIPConfig) -> dict[str, tuple[int, ...]]:
  """Returns the PyTorch name and shape of every tensor of a CLIPModel."""
  text, vision = config.text.hidden_size, config.vision.hidden_size
  num_patches = (config.image_size // config.patch_size) ** 2
  patch = config.patch_size
  shapes = {
    "text_model.embeddings.token_embedding.weight": (config.vocab_size, text),
    "text_model.embeddings.position_embedding.weight": (
      config.max_position_embeddings,
      text,
    ),
    "text_model.final_layer_norm.weight": (text,),
    "text_model.final_layer_norm.bias": (text,),
    "vision_model.embeddings.class_embedding": (vision,),
    "vision_model.embeddings.patch_embedding.weight": (
      vision,
      config.num_channels,
      patch,
      patch,
    ),
    "vision_model.embeddings.position_embedding.weight": (
      num_patches + 1,
      vision,
    ),
    "vision_model.pre_layrnorm.weight": (vision,),
    "vision_model.pre_layrnorm.bias": (vision,),
    "vision_model.post_layernorm.weight": (vision,),
    "vision_model.post_layernorm.bias": (vision,),
    "text_projection.weight": (config.projection_dim, text),
    "visual_projection.weight": (config.projection_dim, vision),
    "logit_scale": (),
  }
  shapes.update(_tower_shapes("text_model", config.text))
  shapes.update(_tower_shapes("vision_model", config.vision))
  return shapes


def _weight_files(directory: pathlib.Path) -> list[pathlib.Path]:
  single = directory / WEIGHTS_FILE
  index = directory / INDEX_FILE
  if single.is_file():
    return [single]
  if not index.is_file():
    raise FileNotFoundError(
      f"{directory} has neither {WEIGHTS_FILE} nor {INDEX_FILE}; point the "
      "path at a directory written by transformers.CLIPModel."
      "save_pretrained(..., safe_serialization=True)."
    )
  weight_map = json.loads(index.read_text()).get("weight_map", {})
  files = [directory / name for name in sorted(set(weight_map.values()))]
  missing = [str(f) for f in files if not f.is_file()]
  if missing:
    raise FileNotFoundError(
      f"{index} names shards that are missing: {missing}; copy the whole "
      "checkpoint directory."
    )
  return files


def _read_tensors(directory: pathlib.Path) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file

  tensors = {}
  for path in _weight_files(directory):
    tensors.update(load_file(str(path)))
  return tensors


def _to_flax(name: str, value: np.ndarray) -> tuple[tuple[str, ...], object]:
  parts = name.split(".")
  leaf = parts[-1]
  if name == "logit_scale" or leaf == "class_embedding":
    return tuple(parts), value
  if parts[-2] == "patch_embedding":
    return (*parts[:-1], "kernel"), np.transpose(value, (2, 3, 1, 0))
  if parts[-2] in ("token_embedding", "position_embedding"):
    return (*parts[:-1], "embedding"), value
  if "norm" in parts[-2]:
    return (*parts[:-1], "scale" if leaf == "weight" else "bias"), value
  if leaf == "weight":
    return (*parts[:-1], "kernel"), np.ascontiguousarray(value.T)
  return tuple(parts), value


def load_clip_params(
  directory: str | pathlib.Path, dtype=np.float32
) -> tuple[dict, CLIPConfig]:
  """Loads a CLIPModel checkpoint into a flax-layout parameter tree.

  Args:
    directory: Local directory with `config.json` and the safetensors
      weights.
    dtype: Type of every returned array (checkpoints are often float16).

  Returns:
    `(params, config)`: the nested dict described in the module docstring
    and the sizes read from `config.json`.

  Raises:
    FileNotFoundError: If the directory, `config.json` or the weights are
      missing.
    ValueError: If a tensor is missing, unexpected or has the wrong shape.
  """
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise FileNotFoundError(
      f"CLIP weights directory {directory} does not exist; pass a local "
      f"directory holding {CONFIG_FILE} and {WEIGHTS_FILE} (as written by "
      "transformers.CLIPModel.save_pretrained). Nothing is downloaded."
    )
  config_path = directory / CONFIG_FILE
  if not config_path.is_file():
    raise FileNotFoundError(
      f"{config_path} is missing; a CLIP-format directory contains "
      f"{CONFIG_FILE} with text_config, vision_config and projection_dim."
    )
  config = read_clip_config(config_path)
  tensors = {
    k: v for k, v in _read_tensors(directory).items() if k not in _BUFFERS
  }

  shapes = expected_shapes(config)
  missing = sorted(set(shapes) - set(tensors))
  unexpected = sorted(set(tensors) - set(shapes))
  if missing or unexpected:
    raise ValueError(
      f"the checkpoint in {directory} does not match its {CONFIG_FILE}: "
      f"{len(missing)} missing tensors {missing[:5]}, {len(unexpected)} "
      f"unexpected tensors {unexpected[:5]}. Check that it is a CLIPModel "
      "(not a CLIPTextModel or CLIPVisionModel) saved with its own config."
    )
  wrong = [
    f"{name}: {tuple(tensors[name].shape)} (expected {shape})"
    for name, shape in shapes.items()
    if tuple(tensors[name].shape) != shape
  ]
  if wrong:
    raise ValueError(
      f"tensors in {directory} have shapes that {CONFIG_FILE} does not "
      f"give: {wrong[:5]}; the weights and the config belong to different "
      "models."
    )

  params: dict = {}
  for name, value in tensors.items():
    path, converted = _to_flax(name, np.asarray(value, dtype))
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = converted
  return params, config
