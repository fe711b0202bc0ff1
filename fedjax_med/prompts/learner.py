"""Prompt learners over a frozen dual encoder, and the `Model` they train.

A `PromptLearner` owns a small trainable tree (CoOp's context vectors, a
prompt generator's weights) and maps it to one text feature per class.
`prompt_model` wraps a learner and a frozen `DualEncoder` into a
`fedjax_med.models.Model` whose `variables["params"]` is that trainable
tree only. The encoder's weights are closed over, so any FedAvg-family round
trains, aggregates and counts in bytes the prompt parameters and nothing
else, and the towers never change.

NOTE: jit embeds closed-over arrays into the compiled program as
constants, so each compiled round carries the frozen towers' weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_med.models.base import Model
from fedjax_med.models.dual_encoder import (
  DualEncoder,
  class_prompts,
  cosine_logits,
  encode_texts,
)

PyTree = Any


class ClassTokens(NamedTuple):
  """The frozen text inputs of a set of classes.

  Attributes:
    embeddings: Word embeddings of each class's prompt text, `[num_classes,
      length, token_width]`, with room for the learned context.
    mask: Attention mask `[num_classes, length]`.
    features: Text features of the hand-written class prompts,
      `[num_classes, embed_dim]`, which prompt generators attend to.
  """

  embeddings: jax.Array
  mask: jax.Array
  features: jax.Array


class PromptLearner(NamedTuple):
  """Trainable prompts as pure functions.

  Attributes:
    init: `rng -> params`, the trainable tree.
    prepare: Host-side `class_names -> ClassTokens`.
    text_features: `(params, class_tokens, image_features [batch,
      embed_dim]) -> [num_classes, embed_dim]`, L2-normalized. Learners
      that do not read the batch ignore `image_features`.
    context: Optional `(params, class_tokens, image_features) -> context`
      of shape `[num_context, token_width]` (or with a leading class axis),
      the vectors `text_features` inserts.
    penalty: Optional `(params, class_tokens) -> scalar` added to every
      local step's loss in federated training, or None.
  """

  init: Callable[[jax.Array], PyTree]
  prepare: Callable[[Sequence[str]], ClassTokens]
  text_features: Callable[[PyTree, ClassTokens, jax.Array], jax.Array]
  context: Callable[[PyTree, ClassTokens, jax.Array], jax.Array] | None = None
  penalty: Callable[[PyTree, ClassTokens], jax.Array] | None = None


def prepare_class_tokens(
  encoder: DualEncoder,
  encoder_params: PyTree,
  class_names: Sequence[str],
  *,
  template: str,
  feature_template: str,
  num_context: int,
) -> ClassTokens:
  """Tokenizes and embeds each class's text, leaving `num_context` slots.

  Args:
    encoder: The frozen towers.
    encoder_params: Their weights.
    class_names: One name per class, in label order.
    template: Text that follows the learned context, with `{}` for the
      class name (CoOp: the class name and a full stop).
    feature_template: Hand-written prompt whose features a generator
      attends to.
    num_context: Context vectors the learner inserts.

  Returns:
    The class tokens, padded to `encoder.max_length - num_context`.
  """
  length = encoder.max_length - num_context
  if length < 2:
    raise ValueError(
      f"num_context={num_context} leaves {length} of the text encoder's "
      f"{encoder.max_length} positions for the class text; lower "
      "num_context."
    )
  ids, mask = encoder.tokenize(class_prompts(class_names, template), length)
  overflow = [
    name for name, row in zip(class_names, mask, strict=True) if row[-1] > 0
  ]
  if overflow:
    raise ValueError(
      f"the prompts of classes {overflow} fill all {length} positions left "
      f"after {num_context} context vectors and may be truncated; lower "
      "num_context or shorten the template."
    )
  embeddings = encoder.embed_tokens(encoder_params, jnp.asarray(ids))
  features = encode_texts(
    encoder, encoder_params, class_prompts(class_names, feature_template)
  )
  return ClassTokens(
    embeddings=embeddings, mask=jnp.asarray(mask), features=features
  )


def insert_context(
  embeddings: jax.Array, mask: jax.Array, context: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Inserts context vectors right after each sequence's start token.

  Args:
    embeddings: `[num_classes, length, width]` word embeddings.
    mask: `[num_classes, length]`.
    context: `[num_context, width]` shared by all classes, or
      `[num_classes, num_context, width]`.

  Returns:
    `(embeddings [num_classes, num_context + length, width], mask)`, with
    every context position attended to.
  """
  num_classes = embeddings.shape[0]
  if context.ndim == 2:
    context = jnp.broadcast_to(context, (num_classes, *context.shape))
  if context.shape[0] != num_classes:
    raise ValueError(
      f"class-specific context has {context.shape[0]} rows but there are "
      f"{num_classes} classes; class-specific context cannot be applied to "
      "other classes than it was trained on."
    )
  context = context.astype(embeddings.dtype)
  context_mask = jnp.ones(context.shape[:2], mask.dtype)
  return (
    jnp.concatenate([embeddings[:, :1], context, embeddings[:, 1:]], axis=1),
    jnp.concatenate([mask[:, :1], context_mask, mask[:, 1:]], axis=1),
  )


def prompt_model(
  encoder: DualEncoder,
  encoder_params: PyTree,
  learner: PromptLearner,
  class_names: Sequence[str],
) -> Model:
  """Builds a classifier over `class_names` whose params are the prompts.

  Returns:
    A `Model` on images `[batch, height, width, channels]` with logits
    `[batch, len(class_names)]`; `init(rng, x)` returns `{"params":
    learner.init(rng)}` whatever `x` is.
  """
  tokens = learner.prepare(class_names)

  def init(rng, x):
    del x  # The prompts' shapes do not depend on the images.
    return {"params": learner.init(rng)}

  def apply(variables, x, train=False, rng=None):
    del train, rng  # Neither tower uses dropout or batch statistics.
    image_features = encoder.encode_image(encoder_params, x)
    text_features = learner.text_features(
      variables["params"], tokens, image_features
    )
    logits = cosine_logits(image_features, text_features, encoder.logit_scale)
    return logits, {}

  return Model(init=init, apply=apply, num_outputs=len(class_names))
