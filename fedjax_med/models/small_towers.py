"""Small image and text towers that fill the `DualEncoder` interface.

They stand in for a pretrained CLIP in tests and quick benchmarks on 8x8
digits, and are randomly initialized. `fedjax_med.prompts.alignment`
trains the image tower against the frozen text tower so that zero-shot
classification works at all.

- `SmallTextEncoder`: a word embedding, learned position embeddings, a few
  pre-LN transformer layers (`flax.linen.MultiHeadDotProductAttention`),
  a final LayerNorm, the masked mean over tokens and a linear projection
  to `embed_dim`, L2-normalized. Mean pooling (rather than CLIP's
  end-of-text token) matches the all-MiniLM-L6-v2 sentence encoder.
- `SmallImageEncoder`: the patch-convolution blocks of `models.cnn` (so
  it vmaps well over weights), flattened, then a linear projection to
  `embed_dim`, L2-normalized.
- `WordTokenizer`: a whitespace-and-punctuation tokenizer over a fixed
  vocabulary with [PAD]=0, [CLS]=1, [SEP]=2 and [UNK]=3, so sequences read
  `[CLS] words [SEP] [PAD]...` like a BERT tokenizer's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med.models.dual_encoder import (
  DEFAULT_TEMPLATE,
  DIGIT_NAMES,
  DualEncoder,
  l2_normalize,
)
from fedjax_med.models.layers import Conv2D

SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]")
PAD_ID, CLS_ID, SEP_ID, UNK_ID = range(4)
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


class WordTokenizer:
  """Maps text to ids over a fixed word list (see the module docstring)."""

  def __init__(self, words: Sequence[str]):
    vocabulary = list(SPECIAL_TOKENS)
    for word in words:
      for piece in _WORD.findall(word.lower()):
        if piece not in vocabulary:
          vocabulary.append(piece)
    self.vocabulary = tuple(vocabulary)
    self._ids = {word: i for i, word in enumerate(self.vocabulary)}

  @property
  def vocab_size(self) -> int:
    return len(self.vocabulary)

  def __call__(
    self, texts: Sequence[str], max_length: int
  ) -> tuple[np.ndarray, np.ndarray]:
    """Tokenizes to `(ids int32, mask float32)`, `[len(texts), max_length]`.

    A text longer than `max_length - 2` words is truncated, keeping [SEP].
    """
    if max_length < 2:
      raise ValueError(
        f"max_length={max_length} leaves no room for [CLS] and [SEP]; use "
        "at least 2."
      )
    ids = np.full((len(texts), max_length), PAD_ID, np.int32)
    mask = np.zeros((len(texts), max_length), np.float32)
    for row, text in enumerate(texts):
      words = _WORD.findall(text.lower())[: max_length - 2]
      tokens = [CLS_ID, *(self._ids.get(w, UNK_ID) for w in words), SEP_ID]
      ids[row, : len(tokens)] = tokens
      mask[row, : len(tokens)] = 1.0
    return ids, mask


class _TransformerLayer(nn.Module):
  num_heads: int
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, hidden: jax.Array, mask: jax.Array) -> jax.Array:
    width = hidden.shape[-1]
    attend = nn.make_attention_mask(mask > 0, mask > 0)
    attended = nn.MultiHeadDotProductAttention(num_heads=self.num_heads)(
      nn.LayerNorm()(hidden), mask=attend
    )
    hidden = hidden + attended
    up = nn.gelu(nn.Dense(self.mlp_ratio * width)(nn.LayerNorm()(hidden)))
    return hidden + nn.Dense(width)(up)


class SmallTextEncoder(nn.Module):
  """A small transformer sentence encoder with an embeddings entry point.

  Attributes:
    vocab_size: Rows of the word embedding.
    width: Token width.
    embed_dim: Width of the output features.
    num_layers: Transformer layers.
    num_heads: Attention heads per layer.
    max_length: Position embeddings, the longest accepted sequence.
  """

  vocab_size: int
  width: int = 32
  embed_dim: int = 32
  num_layers: int = 1
  num_heads: int = 4
  max_length: int = 16

  def setup(self):
    self.word_embeddings = nn.Embed(self.vocab_size, self.width)
    self.position_embeddings = self.param(
      "position_embeddings",
      nn.initializers.normal(0.02),
      (self.max_length, self.width),
    )
    self.layers = [
      _TransformerLayer(self.num_heads) for _ in range(self.num_layers)
    ]
    self.final_norm = nn.LayerNorm()
    self.projection = nn.Dense(self.embed_dim, use_bias=False)

  def embed_tokens(self, ids: jax.Array) -> jax.Array:
    """Looks up word embeddings, `[num_texts, length, width]`."""
    return self.word_embeddings(ids)

  def encode_embeddings(
    self, embeddings: jax.Array, mask: jax.Array
  ) -> jax.Array:
    """Encodes word embeddings and a mask to `[num_texts, embed_dim]`."""
    length = embeddings.shape[1]
    if length > self.max_length:
      raise ValueError(
        f"token sequence of length {length} exceeds the text encoder's "
        f"max_length={self.max_length}; shorten the prompt or build the "
        "encoder with a larger max_length."
      )
    mask = mask.astype(jnp.float32)
    hidden = embeddings + self.position_embeddings[:length]
    for layer in self.layers:
      hidden = layer(hidden, mask)
    hidden = self.final_norm(hidden)
    summed = jnp.einsum("btd,bt->bd", hidden, mask)
    pooled = summed / jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1.0)
    return l2_normalize(self.projection(pooled))

  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    return self.encode_embeddings(self.embed_tokens(ids), mask)


class SmallImageEncoder(nn.Module):
  """Patch-convolution blocks and a projection to `embed_dim`.

  Attributes:
    embed_dim: Width of the output features.
    channels: Output channels of each 3x3 convolution block (ReLU, then
      2x2 max pooling while both spatial sizes are at least 2).
  """

  embed_dim: int = 32
  channels: Sequence[int] = (16, 32)

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """Maps `[batch, height, width, channels]` to `[batch, embed_dim]`."""
    if images.ndim != 4:
      raise ValueError(
        f"SmallImageEncoder expects images [batch, height, width, "
        f"channels], got shape {images.shape}."
      )
    x = images
    for features in self.channels:
      x = nn.relu(Conv2D(features, kernel_size=(3, 3), padding="SAME")(x))
      if x.shape[1] >= 2 and x.shape[2] >= 2:
        x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    return l2_normalize(nn.Dense(self.embed_dim, use_bias=False)(x))


def small_dual_encoder(
  rng: jax.Array,
  *,
  image_shape: tuple[int, int, int] = (8, 8, 1),
  words: Sequence[str] = (*DIGIT_NAMES, DEFAULT_TEMPLATE),
  width: int = 32,
  embed_dim: int = 32,
  num_layers: int = 1,
  num_heads: int = 4,
  max_length: int = 16,
  channels: Sequence[int] = (16, 32),
  logit_scale: float = 100.0,
) -> tuple[DualEncoder, dict]:
  """Builds the small towers with random weights.

  Args:
    rng: Key of the initial weights.
    image_shape: `(height, width, channels)` of the images.
    words: Texts whose words make the tokenizer's vocabulary; other words
      map to [UNK].
    width: Token width of the text tower.
    embed_dim: Width of the shared embedding space.
    num_layers: Transformer layers of the text tower.
    num_heads: Attention heads of the text tower.
    max_length: Maximum token sequence length, [CLS] and [SEP] included.
    channels: Convolution channels of the image tower.
    logit_scale: Multiplier of the cosine similarities.

  Returns:
    `(encoder, params)` with `params = {"image": ..., "text": ...}`.
  """
  tokenizer = WordTokenizer(words)
  text = SmallTextEncoder(
    tokenizer.vocab_size,
    width=width,
    embed_dim=embed_dim,
    num_layers=num_layers,
    num_heads=num_heads,
    max_length=max_length,
  )
  image = SmallImageEncoder(embed_dim=embed_dim, channels=tuple(channels))
  image_key, text_key = jax.random.split(rng)
  ids = jnp.zeros((1, max_length), jnp.int32)
  # Compiled once, which is faster than flax's op-by-op initialization.
  params = {
    "image": jax.jit(image.init)(image_key, jnp.zeros((1, *image_shape)))[
      "params"
    ],
    "text": jax.jit(text.init)(text_key, ids, jnp.ones((1, max_length)))[
      "params"
    ],
  }

  def encode_image(params, images):
    return image.apply({"params": params["image"]}, images)

  def embed_tokens(params, ids):
    return text.apply(
      {"params": params["text"]}, ids, method=SmallTextEncoder.embed_tokens
    )

  def encode_text_from_embeddings(params, embeddings, mask):
    return text.apply(
      {"params": params["text"]},
      embeddings,
      mask,
      method=SmallTextEncoder.encode_embeddings,
    )

  encoder = DualEncoder(
    encode_image=jax.jit(encode_image),
    embed_tokens=jax.jit(embed_tokens),
    encode_text_from_embeddings=jax.jit(encode_text_from_embeddings),
    tokenize=tokenizer,
    logit_scale=logit_scale,
    token_width=width,
    embed_dim=embed_dim,
    max_length=max_length,
  )
  return encoder, params
