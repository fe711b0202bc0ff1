"""The pretrained MiniLM classifier as a `Model` whose frozen weights stay put.

Under parameter-efficient fine-tuning the model's `variables["params"]`
holds only the trainable leaves: the adapters (LoRA's `A` and `B`, soft
prompts, SCL's `W1` and `W2`) and the classification head. The pretrained
weights are a constant that `apply` closes over, the same on every site
because each site reads the same checkpoint. So the FedAvg family trains,
clips, noises, securely sums, compresses and counts in bytes only the
trainable leaves, with no special case. The frozen weights are not in the
delta, not in the non-trainable model state (which rounds average and
count) and not in checkpoints. With `peft.method="full"` every weight is in
`params` and nothing is frozen, the baseline for byte counts.

NOTE: jit embeds closed-over arrays into the compiled program as constants,
so each compiled function that applies a frozen model carries the
pretrained weights (about 90 MB for 6 layers); compiling takes a few
seconds longer than for the full model, whose weights are arguments.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from fedjax_med.models.base import Model
from fedjax_med.models.text import adapters, assets
from fedjax_med.models.text.minilm import MiniLMClassifier, PEFTConfig

_ENCODER = "encoder"
_HEAD = "head"


def is_trainable(path: tuple[str, ...], peft: PEFTConfig) -> bool:
  """Returns whether the parameter at `path` is trained under `peft`.

  Args:
    path: Keys from the root of the classifier's parameter tree, such as
      `("encoder", "layer_0", "attention", "query", "lora_a")`.
    peft: The fine-tuning method.
  """
  if peft.method == "full" or path[0] == _HEAD:
    return True
  if path[-1] in adapters.ADAPTER_NAMES:
    return True
  # The feed-forward down projection is ("encoder", "layer_i", "output", *).
  return (
    peft.method == "scl"
    and peft.scl_train_down_projection
    and len(path) == 4
    and path[1].startswith("layer_")
    and path[2] == "output"
  )


def partition_params(
  params: dict, peft: PEFTConfig
) -> tuple[dict[str, Any], dict[str, Any]]:
  """Splits a parameter tree into `(trainable, frozen)` nested dicts."""
  flat = traverse_util.flatten_dict(params)
  trainable = {k: v for k, v in flat.items() if is_trainable(k, peft)}
  frozen = {k: v for k, v in flat.items() if not is_trainable(k, peft)}
  return (
    traverse_util.unflatten_dict(trainable),
    traverse_util.unflatten_dict(frozen),
  )


def merge_params(trainable: dict, frozen: dict) -> dict:
  """Joins the two halves that `partition_params` returns."""
  flat = traverse_util.flatten_dict(frozen)
  flat.update(traverse_util.flatten_dict(trainable))
  return traverse_util.unflatten_dict(flat)


def with_pretrained(params: dict, pretrained: dict) -> dict:
  """Replaces the encoder's base weights in `params` by the checkpoint's.

  Raises:
    ValueError: If a checkpoint weight has no slot of its shape.
  """
  flat = dict(traverse_util.flatten_dict(params))
  for key, value in traverse_util.flatten_dict(pretrained).items():
    path = (_ENCODER, *key)
    if path not in flat or flat[path].shape != value.shape:
      found = None if path not in flat else flat[path].shape
      raise ValueError(
        f"checkpoint weight {'/'.join(path)} of shape {value.shape} has "
        f"no matching parameter (found {found}); the module and the "
        "loader disagree on the layout."
      )
    flat[path] = jnp.asarray(value, flat[path].dtype)
  return traverse_util.unflatten_dict(flat)


def minilm_classifier(
  num_outputs: int,
  *,
  peft: PEFTConfig | None = None,
  num_layers: int = assets.NUM_LAYERS,
  pretrained: dict | None = None,
) -> Model:
  """Builds the pretrained all-MiniLM-L6-v2 classifier.

  Args:
    num_outputs: Width of the logits (see `num_outputs_for`).
    peft: The fine-tuning method; LoRA on query and value by default.
    num_layers: Keep the first `num_layers` pretrained layers.
    pretrained: The encoder's weights as `assets.load_pretrained_params`
      returns them; read from the installed package when None. Tests pass
      their own to skip the read.

  Returns:
    A `Model` on `x [batch, 2, seq_len]`. `init(rng, x)` draws the
    adapters and the head and returns `{"params": trainable leaves}`; the
    pretrained weights are the same whatever `rng` is.
  """
  peft = PEFTConfig() if peft is None else peft
  if pretrained is None:
    pretrained = assets.load_pretrained_params(num_layers)
  module = MiniLMClassifier(num_outputs, peft=peft, num_layers=num_layers)
  # Every frozen leaf is a checkpoint weight: adapters and the head are
  # trainable under every method.
  frozen = traverse_util.unflatten_dict(
    {
      (_ENCODER, *key): jnp.asarray(value)
      for key, value in traverse_util.flatten_dict(pretrained).items()
      if not is_trainable((_ENCODER, *key), peft)
    }
  )

  def init(rng, x):
    variables = module.init(rng, x, train=False)
    params = with_pretrained(dict(variables["params"]), pretrained)
    trainable, _ = partition_params(params, peft)
    return {"params": trainable}

  def call(variables, x, **kwargs):
    params = merge_params(variables["params"], frozen)
    return module.apply({"params": params}, x, **kwargs)

  def apply(variables, x, train=False, rng=None):
    del rng  # No dropout.
    return call(variables, x, train=train), {}

  def apply_features(variables, x, train=False, rng=None):
    del rng
    logits, features = call(variables, x, train=train, return_features=True)
    return logits, features, {}

  return Model(
    init=init,
    apply=apply,
    num_outputs=num_outputs,
    apply_features=apply_features,
  )


def count_params(tree: Any) -> int:
  """Returns the number of scalars in a pytree."""
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))
