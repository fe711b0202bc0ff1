"""A text-conditioned prompt generator (FedTPG), with FedCSAP's style option.

References:
  * FedTPG: C. Qiu, X. Li, C. K. Mummadi, M. R. Ganesh, Z. Li, L. Peng,
    W.-Y. Lin, "Text-driven Prompt Generation for Vision-Language Models
    in Federated Learning", ICLR 2024, arXiv:2310.06123. The architecture
    below follows a summary of the released code
    (github.com/boschresearch/FedTPG); that code was not read line by
    line, so details such as initializers may differ.
  * FedCSAP: S. Prasad, N. Mahla, S. Gupta, A. Sethi, "Federated
    Cross-Modal Style-Aware Prompt Generation", AAAI-26 Student Abstract,
    arXiv:2508.12399. Only the abstract was available, so the style option
    is a reconstruction from it.

The generator maps the text features of the classes a client trains on to
`num_context` context vectors, which CoOp's layout then inserts after the
start token of every class prompt:

  q = learned queries [num_context, width], drawn from N(0, 0.02^2)
  kv = Dense(text_features [num_classes, embed_dim])  (+ style tokens)
  h = q + CrossAttention(LayerNorm(q), LayerNorm(kv))
  h = h + GEGLU(LayerNorm(h))                          (feed-forward x4)
  h = h + SelfAttention(...), h + GEGLU(...)           (depth times)
  context = Dense(h) [num_context, token_width]

The attention has no position embeddings over the classes, so the context
does not depend on the order in which classes are listed. Clients train the
generator's weights and the server averages them (FedAvg), with both towers
frozen.

Choices:
  * The context goes into the text tower's input only. FedTPG's code also
    supports prompts at deeper layers; they are not implemented.
  * `depth=0` self-attention blocks, FedTPG's default.
  * `width=64` for the generator (FedTPG uses CLIP's 512), sized for the
    small towers; the output projection maps to the token width.
  * Style (`use_style=True`, off by default as FedTPG has none): two extra
    key/value tokens, the mean and the standard deviation over the batch of
    the image features, each projected by its own dense layer. FedCSAP
    takes channel statistics of intermediate vision features and multi-scale
    CLS tokens, which `DualEncoder` does not expose, so the final image
    features stand in for them. The context then depends on the batch.
  * `redundancy_weight` adds FedCSAP's redundancy penalty
    `||T T^T - I||_F^2` on the L2-normalized generated tokens `T` to every
    local step; 0 by default. It needs `use_style=False`, because with
    style the context depends on the batch and the penalty is a function
    of the parameters only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_med.models.dual_encoder import (
  DEFAULT_TEMPLATE,
  DualEncoder,
  l2_normalize,
)
from fedjax_med.prompts.learner import (
  ClassTokens,
  PromptLearner,
  insert_context,
  prepare_class_tokens,
)

PyTree = Any


class GeneratorConfig(NamedTuple):
  """The prompt generator's settings (see the module docstring).

  Attributes:
    num_context: Context vectors generated.
    width: Width of the generator's queries and attention.
    num_heads: Attention heads.
    ff_multiplier: Feed-forward width over `width`.
    depth: Self-attention blocks after the cross-attention.
    use_style: Adds the batch's image-feature mean and standard deviation
      as key/value tokens (FedCSAP).
    redundancy_weight: Weight of `||T T^T - I||_F^2`, 0 to leave it out.
    init_std: Standard deviation of the initial queries.
    template: Class text after the context, with `{}` for the name.
    feature_template: Hand-written prompt whose features the generator
      attends to.
  """

  num_context: int = 4
  width: int = 64
  num_heads: int = 4
  ff_multiplier: int = 4
  depth: int = 0
  use_style: bool = False
  redundancy_weight: float = 0.0
  init_std: float = 0.02
  template: str = "{}."
  feature_template: str = DEFAULT_TEMPLATE


class _GEGLU(nn.Module):
  multiplier: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    value, gate = jnp.split(nn.Dense(2 * self.multiplier * width)(x), 2, -1)
    return nn.Dense(width)(value * nn.gelu(gate))


class PromptGenerator(nn.Module):
  """Learned queries attending to class text features (and style tokens).

  Attributes:
    config: The generator's settings.
    token_width: Width of the generated context vectors.
  """

  config: GeneratorConfig
  token_width: int

  @nn.compact
  def __call__(
    self, text_features: jax.Array, style: jax.Array | None = None
  ) -> jax.Array:
    """Maps `[num_classes, embed_dim]` features to `[num_context, width]`.

    Args:
      text_features: Class text features.
      style: `[2, embed_dim]` batch mean and standard deviation of the image
        features, when the config uses style.
    """
    config = self.config
    queries = self.param(
      "queries",
      nn.initializers.normal(config.init_std),
      (config.num_context, config.width),
    )
    keys = nn.Dense(config.width, name="text_projection")(text_features)
    if config.use_style:
      if style is None:
        raise ValueError(
          "use_style=True needs the batch's style statistics; pass style."
        )
      mean = nn.Dense(config.width, name="style_mean_projection")(style[:1])
      std = nn.Dense(config.width, name="style_std_projection")(style[1:])
      keys = jnp.concatenate([keys, mean, std], axis=0)
    keys = nn.LayerNorm(name="key_norm")(keys)

    hidden = queries + nn.MultiHeadDotProductAttention(
      num_heads=config.num_heads, name="cross_attention"
    )(nn.LayerNorm(name="query_norm")(queries), keys)
    hidden = hidden + _GEGLU(config.ff_multiplier, name="cross_ff")(
      nn.LayerNorm(name="cross_ff_norm")(hidden)
    )
    for i in range(config.depth):
      normed = nn.LayerNorm(name=f"self_norm_{i}")(hidden)
      hidden = hidden + nn.MultiHeadDotProductAttention(
        num_heads=config.num_heads, name=f"self_attention_{i}"
      )(normed, normed)
      hidden = hidden + _GEGLU(config.ff_multiplier, name=f"self_ff_{i}")(
        nn.LayerNorm(name=f"self_ff_norm_{i}")(hidden)
      )
    return nn.Dense(self.token_width, name="output_projection")(hidden)


def batch_style(image_features: jax.Array) -> jax.Array:
  """Returns the batch mean and standard deviation, `[2, embed_dim]`."""
  mean = jnp.mean(image_features, axis=0)
  std = jnp.sqrt(jnp.var(image_features, axis=0) + 1e-6)
  return jnp.stack([mean, std])


def redundancy_penalty(context: jax.Array) -> jax.Array:
  """Returns `||T T^T - I||_F^2` for the L2-normalized rows `T` of context."""
  tokens = l2_normalize(context)
  gram = tokens @ tokens.T
  return jnp.sum((gram - jnp.eye(gram.shape[0])) ** 2)


def prompt_generator(
  encoder: DualEncoder,
  encoder_params: PyTree,
  config: GeneratorConfig | None = None,
) -> PromptLearner:
  """Builds the generator's learner; its params are the generator's weights.

  With `redundancy_weight > 0` the learner's `penalty` is set, and
  `federated_prompt_learning` adds it to every local step's loss.
  """
  config = GeneratorConfig() if config is None else config
  if config.num_context < 1:
    raise ValueError(
      f"num_context={config.num_context}; the generator needs at least 1."
    )
  if config.use_style and config.redundancy_weight > 0:
    raise ValueError(
      "redundancy_weight > 0 needs use_style=False, because with style the "
      "generated context depends on the batch; set one of them off."
    )
  generator = PromptGenerator(config, encoder.token_width)

  def init(rng):
    features = jnp.zeros((1, encoder.embed_dim))
    style = jnp.zeros((2, encoder.embed_dim)) if config.use_style else None
    return jax.jit(generator.init)(rng, features, style)["params"]

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
    style = batch_style(image_features) if config.use_style else None
    return generator.apply({"params": params}, tokens.features, style)

  def text_features(params, tokens: ClassTokens, image_features):
    embeddings, mask = insert_context(
      tokens.embeddings, tokens.mask, context(params, tokens, image_features)
    )
    return encoder.encode_text_from_embeddings(encoder_params, embeddings, mask)

  penalty = None
  if config.redundancy_weight > 0:

    def penalty(params, tokens: ClassTokens):
      generated = generator.apply({"params": params}, tokens.features)
      return config.redundancy_weight * redundancy_penalty(generated)

  return PromptLearner(
    init=init,
    prepare=prepare,
    text_features=text_features,
    context=context,
    penalty=penalty,
  )
