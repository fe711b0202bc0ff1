"""CoOp: learnable context vectors in front of the class name.

Reference: K. Zhou, J. Yang, C. C. Loy, Z. Liu, "Learning to Prompt for
Vision-Language Models", IJCV 2022, arXiv:2109.01134.

The text of class `c` is `[start] v_1 ... v_M name_c . [end]`, where the
`v_i` are learned vectors of the token width and the rest are the frozen
word embeddings of the class text. The frozen text tower encodes the whole
sequence, and the logits are `logit_scale * cos(f(x), t_c)` over the
classes, trained with cross-entropy while both towers stay frozen.

Choices:
  * The context sits at the front of the sequence, right after the start
    token ("end" class token position, CoOp's default). The "middle" and
    "front" positions of the paper are not implemented.
  * `num_context=4` by default (FedTPG's default; CoOp's main experiments
    use 16), because the small text tower has 16 positions.
  * Unified context (one `[M, width]` tree for all classes) is the
    default, because it is the kind that transfers to new classes.
    `class_specific=True` learns `[num_classes, M, width]`; it cannot
    classify classes it was not trained on.
  * `init_words=None` draws the context from N(0, 0.02^2) as CoOp's random
    initialization does. A string such as "a photo of the digit" starts
    from those words' embeddings, which makes the untrained prompt equal
    the hand-written one, and must have exactly `num_context` tokens.
  * A text tower that mean-pools over tokens (the MiniLM and the small
    tower) pools over the context positions too, as over any other word.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_med.models.dual_encoder import DEFAULT_TEMPLATE, DualEncoder
from fedjax_med.prompts.learner import (
  ClassTokens,
  PromptLearner,
  insert_context,
  prepare_class_tokens,
)

PyTree = Any


class CoOpConfig(NamedTuple):
  """CoOp's settings.

  Attributes:
    num_context: Learned context vectors `M` (0 gives the plain prompt).
    class_specific: Learns one context per class.
    num_classes: Classes of a class-specific context; unused otherwise.
    init_words: Words whose embeddings start the context, or None for
      random vectors.
    init_std: Standard deviation of the random start.
    template: Class text after the context, with `{}` for the name.
    feature_template: Hand-written prompt of `ClassTokens.features`.
  """

  num_context: int = 4
  class_specific: bool = False
  num_classes: int = 0
  init_words: str | None = None
  init_std: float = 0.02
  template: str = "{}."
  feature_template: str = DEFAULT_TEMPLATE


def _context_from_words(
  encoder: DualEncoder, encoder_params: PyTree, words: str, num_context: int
) -> jax.Array:
  ids, mask = encoder.tokenize([words], encoder.max_length)
  # Real tokens without the start and end tokens.
  num_tokens = int(mask[0].sum()) - 2
  if num_tokens != num_context:
    raise ValueError(
      f"init_words={words!r} has {num_tokens} tokens but num_context="
      f"{num_context}; set num_context={num_tokens} or change the words."
    )
  embeddings = encoder.embed_tokens(encoder_params, jnp.asarray(ids))
  return embeddings[0, 1 : 1 + num_context]


def coop(
  encoder: DualEncoder,
  encoder_params: PyTree,
  config: CoOpConfig | None = None,
) -> PromptLearner:
  """Builds CoOp's learner; its params are `{"context": array}`."""
  config = CoOpConfig() if config is None else config
  if config.num_context < 0:
    raise ValueError(
      f"num_context={config.num_context} must be >= 0 context vectors."
    )
  if config.class_specific and config.num_classes < 1:
    raise ValueError(
      "class_specific=True needs num_classes, the number of classes the "
      f"context is learned for; got num_classes={config.num_classes}."
    )
  start = None
  if config.init_words is not None:
    start = _context_from_words(
      encoder, encoder_params, config.init_words, config.num_context
    )
  shape = (config.num_context, encoder.token_width)
  if config.class_specific:
    shape = (config.num_classes, *shape)

  def init(rng):
    if start is not None:
      return {"context": jnp.broadcast_to(start, shape).astype(jnp.float32)}
    return {"context": config.init_std * jax.random.normal(rng, shape)}

  def prepare(class_names: Sequence[str]) -> ClassTokens:
    return prepare_class_tokens(
      encoder,
      encoder_params,
      class_names,
      template=config.template,
      feature_template=config.feature_template,
      num_context=config.num_context,
    )

  def context(params, tokens: ClassTokens, image_features):
    del tokens, image_features  # The context is the same for every image.
    return params["context"]

  def text_features(params, tokens: ClassTokens, image_features):
    embeddings, mask = insert_context(
      tokens.embeddings, tokens.mask, context(params, tokens, image_features)
    )
    return encoder.encode_text_from_embeddings(encoder_params, embeddings, mask)

  return PromptLearner(
    init=init, prepare=prepare, text_features=text_features, context=context
  )
