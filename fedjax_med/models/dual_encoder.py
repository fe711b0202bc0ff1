"""An image-text dual encoder as a NamedTuple of pure functions.

Prompt learning (CoOp, FedTPG, BiPrompt) needs a CLIP-like pair of towers
and nothing else about them, so every prompt learner here is written against
`DualEncoder`, which any pair of encoders can fill:

  image_features = encoder.encode_image(params, images)
  token_embeddings = encoder.embed_tokens(params, ids)
  text_features = encoder.encode_text_from_embeddings(
      params, token_embeddings, mask)
  logits = encoder.logit_scale * image_features @ text_features.T

`params` is the pair's whole frozen weight tree, passed explicitly so that
the same functions serve the pretraining that moves it and the prompt
learners that close over it. The text side is split at the token embedding
lookup: `embed_tokens` maps ids to the word embeddings, and
`encode_text_from_embeddings` adds what the encoder adds after the lookup
(position embeddings, the transformer, pooling, a projection). CoOp inserts
learned context vectors between the two calls. Both towers return
L2-normalized features of width `embed_dim`, so the logits are scaled
cosine similarities as in CLIP (A. Radford et al., "Learning Transferable
Visual Models From Natural Language Supervision", ICML 2021,
arXiv:2103.00020).

Tokenization runs on the host: `tokenize(texts, max_length)` returns int32
ids and a float32 attention mask, both `[num_texts, max_length]`. The first
token of every sequence is a start token ([CLS] for BERT-style tokenizers,
<|startoftext|> for CLIP's), and prompt learners insert context right after
it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

DIGIT_NAMES = (
  "zero",
  "one",
  "two",
  "three",
  "four",
  "five",
  "six",
  "seven",
  "eight",
  "nine",
)
DEFAULT_TEMPLATE = "a photo of the digit {}."


class DualEncoder(NamedTuple):
  """An image tower and a text tower that share one embedding space.

  Attributes:
    encode_image: `(params, images [batch, height, width, channels]) ->
      [batch, embed_dim]`, L2-normalized.
    embed_tokens: `(params, ids [num_texts, length]) -> [num_texts,
      length, token_width]`, the word embeddings before anything that
      depends on the position.
    encode_text_from_embeddings: `(params, embeddings [num_texts, length,
      token_width], mask [num_texts, length]) -> [num_texts, embed_dim]`,
      L2-normalized; `mask` is 1 on tokens to attend to and pool.
    tokenize: Host-side `(texts, max_length) -> (ids, mask)`, numpy arrays
      `[num_texts, max_length]` of int32 and float32, padded or truncated.
    logit_scale: Multiplier of the cosine similarities (CLIP's
      `exp(logit_scale)`, 100 in the released checkpoints).
    token_width: Width of the token embeddings.
    embed_dim: Width of the shared embedding space.
    max_length: Maximum token sequence length the text tower accepts.
  """

  encode_image: Callable[[PyTree, jax.Array], jax.Array]
  embed_tokens: Callable[[PyTree, jax.Array], jax.Array]
  encode_text_from_embeddings: Callable[
    [PyTree, jax.Array, jax.Array], jax.Array
  ]
  tokenize: Callable[[Sequence[str], int], tuple[np.ndarray, np.ndarray]]
  logit_scale: float
  token_width: int
  embed_dim: int
  max_length: int


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12):
  """Divides `x` by its L2 norm along `axis` (at least `eps`)."""
  norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
  return x / jnp.maximum(norm, eps)


def encode_texts(
  encoder: DualEncoder,
  params: PyTree,
  texts: Sequence[str],
  max_length: int | None = None,
) -> jax.Array:
  """Encodes whole sentences, `[num_texts, embed_dim]`."""
  ids, mask = encoder.tokenize(list(texts), max_length or encoder.max_length)
  embeddings = encoder.embed_tokens(params, jnp.asarray(ids))
  return encoder.encode_text_from_embeddings(
    params, embeddings, jnp.asarray(mask)
  )


def class_prompts(
  class_names: Sequence[str], template: str = DEFAULT_TEMPLATE
) -> list[str]:
  """Fills `template` (with one `{}`) with every class name."""
  if template.count("{}") != 1:
    raise ValueError(
      f"template {template!r} must contain exactly one '{{}}' for the "
      "class name."
    )
  return [template.format(name) for name in class_names]


def cosine_logits(
  image_features: jax.Array, text_features: jax.Array, logit_scale
) -> jax.Array:
  """Returns `logit_scale * image_features @ text_features.T`.

  Args:
    image_features: `[batch, embed_dim]`, L2-normalized.
    text_features: `[num_classes, embed_dim]`, L2-normalized.
    logit_scale: Scalar multiplier.

  Returns:
    Logits `[batch, num_classes]`.
  """
  return logit_scale * image_features @ text_features.T


def zero_shot_logits(
  encoder: DualEncoder,
  params: PyTree,
  images: jax.Array,
  class_names: Sequence[str],
  template: str = DEFAULT_TEMPLATE,
) -> jax.Array:
  """Classifies images by similarity to hand-written class prompts."""
  text_features = encode_texts(
    encoder, params, class_prompts(class_names, template)
  )
  image_features = encoder.encode_image(params, images)
  return cosine_logits(image_features, text_features, encoder.logit_scale)
