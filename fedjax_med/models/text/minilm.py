"""The all-MiniLM-L6-v2 sentence encoder in flax, with optional adapters.

all-MiniLM-L6-v2 (sentence-transformers) is a BERT encoder: 6 post-LN
transformer layers of width 384 with 12 heads, feed-forward width 1536 and
exact (erf) GELU, over a 30 522-token WordPiece vocabulary. Its sentence
embedding is the mean of the last layer's token states over the attention
mask, L2-normalized (the package's modules.json: Transformer, Pooling with
`pooling_mode_mean_tokens`, Normalize). `assets.load_pretrained_params`
reads the weights; the checkpoint's [CLS] pooler is unused.

Departures from the PyTorch model: dropout (0.1 in the checkpoint's config)
is never applied, so fine-tuning is deterministic, and token type ids are
always 0, as they are for single sentences.

Input: `x` of shape `[batch, 2, seq_len]`, token ids in row 0 and the
attention mask in row 1, stored as float32 (see `assets.tokenize`).

Soft prompts: B. Lester, R. Al-Rfou, N. Constant, "The Power of Scale for
Parameter-Efficient Prompt Tuning", EMNLP 2021, arXiv:2104.08691. The
`num_prompts` learned vectors are prepended to the token states after the
embedding block (so they carry no position embedding) and are attended to
by every token; the mean pooling still averages the sentence's own tokens
only. They start from N(0, 0.02^2), the checkpoint's initializer range,
where the paper's best start is sampled vocabulary embeddings.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_med.models.text import adapters, assets

PEFT_METHODS = ("full", "lora", "prompt", "scl")
LORA_TARGETS = (
  "query",
  "key",
  "value",
  "attention_output",
  "intermediate",
  "output",
)


@dataclasses.dataclass(frozen=True)
class PEFTConfig:
  """The fine-tuning method: the adapters inserted and the leaves trained.

  Attributes:
    method: "full" trains every weight; "lora", "prompt" and "scl" freeze
      the pretrained weights and train only their adapters and the head.
    lora_rank: LoRA rank `r`.
    lora_alpha: LoRA scale numerator (the update is scaled by alpha / r).
    lora_targets: Dense layers that get LoRA, from `LORA_TARGETS`; the
      LoRA paper adapts the attention query and value projections.
    num_prompts: Soft prompt vectors for method "prompt".
    scl_rank: Bottleneck width of the SCL layers.
    scl_train_down_projection: Whether SCL also trains each feed-forward
      block's down projection.
  """

  method: str = "lora"
  lora_rank: int = 8
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = ("query", "value")
  num_prompts: int = 8
  scl_rank: int = 32
  scl_train_down_projection: bool = False

  def __post_init__(self):
    if self.method not in PEFT_METHODS:
      raise ValueError(
        f"peft method={self.method!r} is unknown; use one of {PEFT_METHODS}."
      )
    unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
    if unknown:
      raise ValueError(
        f"lora_targets {unknown} are unknown; use names from {LORA_TARGETS}."
      )
    for name in ("lora_rank", "num_prompts", "scl_rank"):
      if getattr(self, name) < 1:
        raise ValueError(
          f"{name}={getattr(self, name)} must be a positive integer."
        )

  def lora_rank_for(self, target: str) -> int:
    """Returns the LoRA rank of dense layer `target`, 0 when not adapted."""
    if self.method == "lora" and target in self.lora_targets:
      return self.lora_rank
    return 0


class SelfAttention(nn.Module):
  """Multi-head self-attention with LoRA-capable projections."""

  num_heads: int
  peft: PEFTConfig

  @nn.compact
  def __call__(self, hidden: jax.Array, mask: jax.Array) -> jax.Array:
    batch, length, width = hidden.shape
    head_dim = width // self.num_heads

    def dense(name, target):
      return adapters.LoRADense(
        width,
        rank=self.peft.lora_rank_for(target),
        alpha=self.peft.lora_alpha,
        name=name,
      )

    def heads(t):
      return t.reshape(batch, length, self.num_heads, head_dim)

    query = heads(dense("query", "query")(hidden))
    key = heads(dense("key", "key")(hidden))
    value = heads(dense("value", "value")(hidden))
    # [batch, 1, query, key]: a query never attends to padding.
    attend = (mask[:, None, None, :] > 0) & jnp.ones((1, 1, length, 1), bool)
    context = jax.nn.dot_product_attention(query, key, value, mask=attend)
    context = context.reshape(batch, length, width)
    return dense("output", "attention_output")(context)


class TransformerLayer(nn.Module):
  """One post-LN BERT layer: attention, then the feed-forward block."""

  num_heads: int
  intermediate_size: int
  peft: PEFTConfig

  @nn.compact
  def __call__(self, hidden: jax.Array, mask: jax.Array) -> jax.Array:
    width = hidden.shape[-1]
    norm = dict(epsilon=assets.LAYER_NORM_EPS, use_fast_variance=False)

    attended = SelfAttention(self.num_heads, self.peft, name="attention")(
      hidden, mask
    )
    hidden = nn.LayerNorm(name="attention_norm", **norm)(hidden + attended)

    up = adapters.LoRADense(
      self.intermediate_size,
      rank=self.peft.lora_rank_for("intermediate"),
      alpha=self.peft.lora_alpha,
      name="intermediate",
    )(hidden)
    up = jax.nn.gelu(up, approximate=False)
    if self.peft.method == "scl":
      up = adapters.SequentialCompression(self.peft.scl_rank, name="scl")(up)
    down = adapters.LoRADense(
      width,
      rank=self.peft.lora_rank_for("output"),
      alpha=self.peft.lora_alpha,
      name="output",
    )(up)
    return nn.LayerNorm(name="output_norm", **norm)(hidden + down)


class Embeddings(nn.Module):
  """Word, position and token-type embeddings, summed and normalized."""

  hidden_size: int = assets.HIDDEN_SIZE

  @nn.compact
  def __call__(
    self, ids: jax.Array | None, inputs_embeds: jax.Array | None = None
  ) -> jax.Array:
    """Embeds ids `[batch, seq_len]`, or word embeddings given directly.

    `inputs_embeds [batch, seq_len, hidden_size]` replaces the word
    embedding lookup of `ids` (which may then be None); position and
    token-type embeddings and the LayerNorm are applied to both alike.
    """
    word_embeddings = nn.Embed(
      assets.VOCAB_SIZE, self.hidden_size, name="word_embeddings"
    )
    words = word_embeddings(ids) if inputs_embeds is None else inputs_embeds
    length = words.shape[1]
    positions = nn.Embed(
      assets.MAX_POSITIONS, self.hidden_size, name="position_embeddings"
    )(jnp.arange(length)[None, :])
    # Every token has type 0, so one row is added to all of them; a gather
    # per token would make XLA fold a [tokens, 384] constant.
    types = nn.Embed(
      assets.TYPE_VOCAB_SIZE, self.hidden_size, name="token_type_embeddings"
    )(jnp.zeros((1, 1), jnp.int32))
    return nn.LayerNorm(
      epsilon=assets.LAYER_NORM_EPS, use_fast_variance=False, name="norm"
    )(words + positions + types)


class MiniLMEncoder(nn.Module):
  """The sentence encoder: token ids and mask to an L2-normalized embedding.

  Attributes:
    peft: Adapters to insert; `PEFTConfig(method="full")` has none.
    num_layers: Transformer layers (the checkpoint has 6).
  """

  peft: PEFTConfig = PEFTConfig(method="full")
  num_layers: int = assets.NUM_LAYERS

  @nn.compact
  def __call__(
    self,
    ids: jax.Array | None,
    mask: jax.Array,
    inputs_embeds: jax.Array | None = None,
  ) -> jax.Array:
    """Maps ids and mask `[batch, seq_len]` to embeddings `[batch, 384]`.

    `inputs_embeds [batch, seq_len, 384]`, when given, replaces the word
    embeddings of `ids` (as in Hugging Face's BERT), so learned vectors such
    as CoOp's context can stand in for tokens.
    """
    mask = mask.astype(jnp.float32)
    hidden = Embeddings(name="embeddings")(ids, inputs_embeds)
    num_prompts = 0
    if self.peft.method == "prompt":
      num_prompts = self.peft.num_prompts
      prompts = self.param(
        adapters.PROMPT,
        nn.initializers.normal(0.02),
        (num_prompts, hidden.shape[-1]),
      )
      hidden, attention_mask = adapters.prepend_prompts(hidden, mask, prompts)
    else:
      attention_mask = mask
    for i in range(self.num_layers):
      hidden = TransformerLayer(
        assets.NUM_HEADS,
        assets.INTERMEDIATE_SIZE,
        self.peft,
        name=f"layer_{i}",
      )(hidden, attention_mask)
    tokens = hidden[:, num_prompts:]

    # Mean pooling and normalization as sentence-transformers computes them.
    summed = jnp.einsum("btd,bt->bd", tokens, mask)
    counts = jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1e-9)
    pooled = summed / counts
    # max(||p||, 1e-12) as torch's normalize, written so that its gradient
    # stays finite on padding rows, whose pooled vector is zero.
    squared = jnp.sum(pooled**2, axis=-1, keepdims=True)
    return pooled / jnp.sqrt(jnp.maximum(squared, 1e-24))


def split_tokens(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Splits `x [batch, 2, seq_len]` into int32 ids and a float mask."""
  return x[:, 0].astype(jnp.int32), x[:, 1]


class MiniLMClassifier(nn.Module):
  """The encoder with a dense head on its sentence embedding.

  Attributes:
    num_outputs: Width of the logits.
    peft: Adapters to insert.
    num_layers: Transformer layers of the encoder.
  """

  num_outputs: int
  peft: PEFTConfig = PEFTConfig()
  num_layers: int = assets.NUM_LAYERS

  @nn.compact
  def __call__(
    self, x: jax.Array, train: bool = False, return_features: bool = False
  ):
    """Maps `x [batch, 2, seq_len]` to logits `[batch, num_outputs]`.

    `train` has no effect (no dropout). With `return_features` it returns
    `(logits, sentence embeddings [batch, 384])`.
    """
    del train
    ids, mask = split_tokens(x)
    embedding = MiniLMEncoder(self.peft, self.num_layers, name="encoder")(
      ids, mask
    )
    logits = nn.Dense(self.num_outputs, name="head")(embedding)
    return (logits, embedding) if return_features else logits
