"""Parameter-efficient adapters for the MiniLM encoder: LoRA and SCL.

LoRA: E. J. Hu, Y. Shen, P. Wallis, Z. Allen-Zhu, Y. Li, S. Wang, L. Wang,
W. Chen, "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022,
arXiv:2106.09685. A frozen dense layer `y = x W + b` gains a trainable
low-rank term, `y = x W + b + (alpha / r) x A B`, with `A: [d_in, r]` drawn
at random and `B: [r, d_out]` zero, so the adapted layer equals the
pretrained one until `B` moves. `A` is drawn as PyTorch draws a Linear
weight (`kaiming_uniform_(a=sqrt(5))`), where the paper specifies a random
Gaussian. LoRA dropout is not applied.

SCL (a reconstruction): N. Mahla, S. Gupta, A. Sethi, "Sequential
Compression Layers for Efficient Federated Learning in Foundational
Models", ICLR 2025 Workshop SCI-FM, arXiv:2412.07021. The paper inserts a
small trainable network between the up and down projections of every
feed-forward block; its exact form was not available. This module uses
`c(h) = h + W2 phi(W1 h)` with `W1: [d_ff, r]`, `W2: [r, d_ff]`, phi =
GELU, no biases, and `W2` zero so the pretrained function is unchanged at
the first round. Only `W1` and `W2` are trained by default; training the
down projection too is an option (`train_down_projection` in
`PEFTConfig`), off because it adds `d_ff * d` weights per layer.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# Parameter names of the adapters; a leaf with one of these names is
# trainable under parameter-efficient fine-tuning.
LORA_A = "lora_a"
LORA_B = "lora_b"
SCL_W1 = "scl_w1"
SCL_W2 = "scl_w2"
PROMPT = "prompt"
ADAPTER_NAMES = (LORA_A, LORA_B, SCL_W1, SCL_W2, PROMPT)

# PyTorch's default Linear init, kaiming_uniform_(a=sqrt(5)).
_lora_a_init = nn.initializers.variance_scaling(1.0 / 3, "fan_in", "uniform")


class LoRADense(nn.Module):
  """A dense layer with an optional low-rank update.

  Attributes:
    features: Output width.
    rank: LoRA rank `r`; 0 gives a plain dense layer.
    alpha: LoRA scale numerator; the update is scaled by `alpha / rank`.
  """

  features: int
  rank: int = 0
  alpha: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features)
    )
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    y = x @ kernel + bias
    if self.rank > 0:
      a = self.param(LORA_A, _lora_a_init, (x.shape[-1], self.rank))
      b = self.param(LORA_B, nn.initializers.zeros, (self.rank, self.features))
      y = y + (self.alpha / self.rank) * ((x @ a) @ b)
    return y


class SequentialCompression(nn.Module):
  """The residual bottleneck `h + W2 gelu(W1 h)` of SCL.

  Attributes:
    rank: Bottleneck width `r`.
  """

  rank: int

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    width = h.shape[-1]
    w1 = self.param(SCL_W1, nn.initializers.lecun_normal(), (width, self.rank))
    w2 = self.param(SCL_W2, nn.initializers.zeros, (self.rank, width))
    return h + jax.nn.gelu(h @ w1, approximate=False) @ w2


def prepend_prompts(
  hidden: jax.Array, mask: jax.Array, prompts: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Prepends soft prompts to a batch of token states.

  Args:
    hidden: Token states `[batch, seq_len, dim]`.
    mask: Attention mask `[batch, seq_len]`, 1 on real tokens.
    prompts: Prompt vectors `[num_prompts, dim]`.

  Returns:
    `(hidden [batch, num_prompts + seq_len, dim], mask [batch, num_prompts
    + seq_len])`; every prompt position is attended to.
  """
  batch = hidden.shape[0]
  tiled = jnp.broadcast_to(prompts, (batch, *prompts.shape))
  prompt_mask = jnp.ones((batch, prompts.shape[0]), mask.dtype)
  return (
    jnp.concatenate([tiled.astype(hidden.dtype), hidden], axis=1),
    jnp.concatenate([prompt_mask, mask], axis=1),
  )
