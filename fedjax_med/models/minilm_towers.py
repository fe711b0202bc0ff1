"""The pretrained MiniLM text tower with a small image tower, as a DualEncoder.

The text tower is all-MiniLM-L6-v2 (`fedjax_med.models.text`), whose
sentence embedding is the masked mean of its last layer's token states,
L2-normalized, width 384. `embed_tokens` is its word embedding lookup, and
`encode_text_from_embeddings` runs the rest of the encoder (position and
token-type embeddings, LayerNorm, the transformer layers and the pooling)
through `MiniLMEncoder`'s `inputs_embeds` entry point. Tokenization is the
checkpoint's WordPiece tokenizer, so sequences read `[CLS] words [SEP]`.

The image tower is `small_towers.SmallImageEncoder` projecting to 384,
randomly initialized: an all-MiniLM-L6-v2 checkpoint has no image side, so
`fedjax_med.prompts.alignment` trains the image tower against the frozen
MiniLM features before prompt learning, standing in for a pretrained CLIP.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med.models.dual_encoder import DualEncoder
from fedjax_med.models.small_towers import SmallImageEncoder
from fedjax_med.models.text import assets
from fedjax_med.models.text.minilm import MiniLMEncoder


def tokenize(
  texts: Sequence[str], max_length: int
) -> tuple[np.ndarray, np.ndarray]:
  """Tokenizes with the checkpoint's tokenizer into `(ids, mask)`."""
  x = assets.tokenize(list(texts), max_length)
  return x[:, 0].astype(np.int32), x[:, 1]


def minilm_dual_encoder(
  rng: jax.Array,
  *,
  num_layers: int = assets.NUM_LAYERS,
  pretrained: dict | None = None,
  image_shape: tuple[int, int, int] = (8, 8, 1),
  channels: Sequence[int] = (16, 32),
  max_length: int = 16,
  logit_scale: float = 100.0,
) -> tuple[DualEncoder, dict]:
  """Builds the MiniLM text tower and a random small image tower.

  Args:
    rng: Key of the image tower's initial weights.
    num_layers: MiniLM transformer layers kept (1 to 6).
    pretrained: MiniLM weights as `assets.load_pretrained_params` returns
      them; read from the installed package when None.
    image_shape: `(height, width, channels)` of the images.
    channels: Convolution channels of the image tower.
    max_length: Maximum token sequence length, [CLS] and [SEP] included.
    logit_scale: Multiplier of the cosine similarities.

  Returns:
    `(encoder, params)` with `params = {"image": ..., "text": ...}`.

  Raises:
    FileNotFoundError: If `pretrained` is None and the package that ships
      the weights is not installed.
  """
  if pretrained is None:
    pretrained = assets.load_pretrained_params(num_layers)
  text = MiniLMEncoder(num_layers=num_layers)
  image = SmallImageEncoder(
    embed_dim=assets.HIDDEN_SIZE, channels=tuple(channels)
  )
  image_params = jax.jit(image.init)(rng, jnp.zeros((1, *image_shape)))
  params = {
    "image": image_params["params"],
    "text": jax.tree.map(jnp.asarray, pretrained),
  }

  def encode_image(params, images):
    return image.apply({"params": params["image"]}, images)

  def embed_tokens(params, ids):
    table = params["text"]["embeddings"]["word_embeddings"]["embedding"]
    return jnp.take(table, ids, axis=0)

  def encode_text_from_embeddings(params, embeddings, mask):
    return text.apply({"params": params["text"]}, None, mask, embeddings)

  encoder = DualEncoder(
    encode_image=jax.jit(encode_image),
    embed_tokens=jax.jit(embed_tokens),
    encode_text_from_embeddings=jax.jit(encode_text_from_embeddings),
    tokenize=tokenize,
    logit_scale=logit_scale,
    token_width=assets.HIDDEN_SIZE,
    embed_dim=assets.HIDDEN_SIZE,
    max_length=max_length,
  )
  return encoder, params
