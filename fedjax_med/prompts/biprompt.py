"""BiPrompt: test-time debiasing of both modalities (a reconstruction).

Reference: S. Gupta, S. Das, A. Sethi, "BiPrompt: Bilateral Prompt
Optimization for Visual and Textual Debiasing in Vision Language Models",
AAAI 2026 Workshop on AI for Robust Foundation Models, arXiv:2601.02147.
Only the abstract was available, so this module is a reconstruction of it:
the formulas below are this implementation's, with the open choices as
`BiPromptConfig` fields.

For each test batch, without labels:

  Text side (balanced prompt normalization): with the class text features
  `t_c` of the prompt learner, `t'_c = normalize(t_c - a * mean_c t_c)`,
  with a learned centering `a` (a scalar, or one value per feature).
  `a = 0` leaves the features unchanged and `a = 1` removes their mean.

  Image side (erasure): a saliency map splits every image into patches.
  The `causal_fraction` most salient patches are kept as the causal view
  `x_c`, with the other patches replaced by the image's mean colour, and
  the spurious view `x_s` erases the causal patches instead.

  Loss, averaged over the batch:
    H(p(x_c)) + orthogonality_weight * <p(x_c), p(x_s)>
              + uniformity_weight * KL(p(x_s) || Uniform),
  where `p` are the softmax probabilities under `t'`. Entropy minimization
  on the causal view follows TPT (M. Shu et al., "Test-Time Prompt Tuning
  for Zero-Shot Generalization in Vision-Language Models", NeurIPS 2022,
  arXiv:2209.07511). The other two terms push the spurious view's
  prediction away from the causal one's and towards no class at all.

  `num_steps` Adam steps on `a` (and, with `train_prompts`, on the prompt
  learner's parameters) minimize it. The batch is then classified.

Choices:
  * Saliency is the vanilla gradient (K. Simonyan, A. Vedaldi, A.
    Zisserman, "Deep Inside Convolutional Networks", arXiv:1312.6034): the
    absolute gradient of each image's top logit under the starting text
    features with respect to its pixels, summed over channels and averaged
    over each `patch_size` x `patch_size` patch. The paper uses the CLIP
    ViT's attention, which a convolutional tower does not have, and the
    gradient needs only `DualEncoder.encode_image`. It is computed once per
    batch, before the adaptation steps.
  * `causal_fraction=0.5` of the patches (rounded, at least 1 and at most
    all but 1) are causal.
  * The centering starts at `a = 1` and is a scalar (`centering="scalar"`);
    `"vector"` learns one value per feature.
  * `train_prompts=True` adapts the prompt learner's parameters too, as
    the abstract's "learnable soft prompt tokens" suggest.
  * `episodic=True` (the TPT protocol) restarts every batch from the
    trained prompts and `a`; False carries the adapted values on to the
    next batch.
  * `predict_on="full"` classifies the unerased images after adaptation;
    `"causal"` classifies the causal views.
  * Defaults: Adam with learning rate 5e-3 and one step per batch.

Federated use: each site runs this module on its own test batches on top of
the prompts a federated prompt learner produced. Nothing is sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_med.models.dual_encoder import (
  DualEncoder,
  cosine_logits,
  l2_normalize,
)
from fedjax_med.prompts.learner import PromptLearner

PyTree = Any

CENTERINGS = ("scalar", "vector")
PREDICT_ON = ("full", "causal")


class BiPromptConfig(NamedTuple):
  """BiPrompt's settings (see the module docstring for each choice).

  Attributes:
    num_steps: Adam steps per test batch.
    learning_rate: Adam's learning rate.
    orthogonality_weight: Weight of `<p(x_c), p(x_s)>`.
    uniformity_weight: Weight of `KL(p(x_s) || Uniform)`.
    causal_fraction: Share of patches kept in the causal view, in (0, 1).
    patch_size: Side of a square saliency patch, in pixels; it must divide
      the image's height and width.
    centering: "scalar" or "vector".
    centering_init: Starting value of `a`.
    train_prompts: Also adapts the prompt learner's parameters.
    episodic: Restarts every batch from the starting parameters.
    predict_on: "full" or "causal".
  """

  num_steps: int = 1
  learning_rate: float = 5e-3
  orthogonality_weight: float = 1.0
  uniformity_weight: float = 1.0
  causal_fraction: float = 0.5
  patch_size: int = 2
  centering: str = "scalar"
  centering_init: float = 1.0
  train_prompts: bool = True
  episodic: bool = True
  predict_on: str = "full"


def balanced_text_features(text_features: jax.Array, centering) -> jax.Array:
  """Returns `normalize(t_c - a * mean_c t_c)` for `[num_classes, dim]`."""
  mean = jnp.mean(text_features, axis=0, keepdims=True)
  return l2_normalize(text_features - centering * mean)


def debiasing_loss(
  causal_probabilities: jax.Array,
  spurious_probabilities: jax.Array,
  orthogonality_weight: float,
  uniformity_weight: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Computes BiPrompt's loss from `[batch, num_classes]` probabilities.

  Returns:
    `(loss, terms)` with the batch means "entropy", "orthogonality" and
    "uniformity" (the KL divergence to the uniform distribution).
  """
  num_classes = causal_probabilities.shape[-1]
  tiny = jnp.finfo(causal_probabilities.dtype).tiny
  entropy = -jnp.sum(
    causal_probabilities * jnp.log(jnp.maximum(causal_probabilities, tiny)),
    axis=-1,
  )
  orthogonality = jnp.sum(causal_probabilities * spurious_probabilities, -1)
  uniformity = jnp.sum(
    spurious_probabilities
    * jnp.log(jnp.maximum(spurious_probabilities, tiny) * num_classes),
    axis=-1,
  )
  terms = {
    "entropy": jnp.mean(entropy),
    "orthogonality": jnp.mean(orthogonality),
    "uniformity": jnp.mean(uniformity),
  }
  loss = (
    terms["entropy"]
    + orthogonality_weight * terms["orthogonality"]
    + uniformity_weight * terms["uniformity"]
  )
  return loss, terms


def gradient_saliency(
  encoder: DualEncoder,
  encoder_params: PyTree,
  text_features: jax.Array,
  images: jax.Array,
) -> jax.Array:
  """Returns `|d top logit / d pixel|` summed over channels, `[batch, H, W]`."""

  def top_logits(images):
    logits = cosine_logits(
      encoder.encode_image(encoder_params, images),
      text_features,
      encoder.logit_scale,
    )
    # Images do not interact in the tower, so one sum gives every
    # image's own gradient.
    return jnp.sum(jnp.max(logits, axis=-1))

  gradient = jax.grad(top_logits)(images)
  return jnp.sum(jnp.abs(gradient), axis=-1)


def num_causal_patches(num_patches: int, causal_fraction: float) -> int:
  """Returns `round(fraction * patches)`, clipped to `[1, patches - 1]`."""
  return int(min(max(round(causal_fraction * num_patches), 1), num_patches - 1))


def erase_views(
  images: jax.Array,
  saliency: jax.Array,
  patch_size: int,
  causal_fraction: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Splits images into causal and spurious views by patch saliency.

  Args:
    images: `[batch, height, width, channels]`.
    saliency: `[batch, height, width]`, larger where a pixel matters more.
    patch_size: Side of a square patch; it divides height and width.
    causal_fraction: Share of patches in the causal view.

  Returns:
    `(causal_view, spurious_view, causal_mask)`: each view has the shape of
    `images`, with the other view's patches set to the image's mean colour,
    and the mask `[batch, height, width]` is True on causal pixels.
  """
  batch, height, width, _ = images.shape
  if height % patch_size or width % patch_size:
    raise ValueError(
      f"patch_size={patch_size} does not divide the {height}x{width} "
      "images; pick a divisor of both sides."
    )
  rows, cols = height // patch_size, width // patch_size
  patches = saliency.reshape(batch, rows, patch_size, cols, patch_size)
  scores = patches.mean(axis=(2, 4)).reshape(batch, rows * cols)
  k = num_causal_patches(rows * cols, causal_fraction)
  _, top = jax.lax.top_k(scores, k)
  causal = jnp.zeros((batch, rows * cols), bool)
  causal = causal.at[jnp.arange(batch)[:, None], top].set(True)
  causal = causal.reshape(batch, rows, 1, cols, 1)
  causal = jnp.broadcast_to(causal, (batch, rows, patch_size, cols, patch_size))
  causal = causal.reshape(batch, height, width)

  fill = jnp.mean(images, axis=(1, 2), keepdims=True)
  keep = causal[..., None]
  causal_view = jnp.where(keep, images, fill)
  spurious_view = jnp.where(keep, fill, images)
  return causal_view, spurious_view, causal


def _validate(config: BiPromptConfig):
  if config.centering not in CENTERINGS:
    raise ValueError(
      f"centering={config.centering!r} is unknown; use one of {CENTERINGS}."
    )
  if config.predict_on not in PREDICT_ON:
    raise ValueError(
      f"predict_on={config.predict_on!r} is unknown; use one of {PREDICT_ON}."
    )
  if not 0.0 < config.causal_fraction < 1.0:
    raise ValueError(
      f"causal_fraction={config.causal_fraction} must lie in (0, 1)."
    )
  if config.num_steps < 0:
    raise ValueError(f"num_steps={config.num_steps} must be >= 0.")


class BiPrompt(NamedTuple):
  """BiPrompt bound to an encoder, a learner and a set of classes.

  Attributes:
    init: `prompt_params -> adapted`, the starting `{"centering",
      "prompts"}` tree.
    adapt: `(adapted, images) -> (logits, adapted, metrics)`, one test
      batch, jit-compiled once per batch shape.
    config: The settings it was built with.
  """

  init: Any
  adapt: Any
  config: BiPromptConfig


def biprompt(
  encoder: DualEncoder,
  encoder_params: PyTree,
  learner: PromptLearner,
  class_names: Sequence[str],
  config: BiPromptConfig | None = None,
) -> BiPrompt:
  """Builds BiPrompt's test-time adaptation for `class_names`."""
  config = BiPromptConfig() if config is None else config
  _validate(config)
  tokens = learner.prepare(class_names)
  optimizer = optax.adam(config.learning_rate)

  def init(prompt_params):
    shape = () if config.centering == "scalar" else (encoder.embed_dim,)
    return {
      "centering": jnp.full(shape, config.centering_init, jnp.float32),
      "prompts": prompt_params,
    }

  def text_features(adapted, image_features):
    features = learner.text_features(adapted["prompts"], tokens, image_features)
    return balanced_text_features(features, adapted["centering"])

  def probabilities(adapted, images, image_features):
    logits = cosine_logits(
      encoder.encode_image(encoder_params, images),
      text_features(adapted, image_features),
      encoder.logit_scale,
    )
    return jax.nn.softmax(logits, axis=-1)

  def adapt(adapted, images):
    image_features = encoder.encode_image(encoder_params, images)
    saliency = gradient_saliency(
      encoder,
      encoder_params,
      text_features(adapted, image_features),
      images,
    )
    causal_view, spurious_view, _ = erase_views(
      images, saliency, config.patch_size, config.causal_fraction
    )

    def loss_fn(trainable, frozen):
      current = {**frozen, **trainable}
      loss, terms = debiasing_loss(
        probabilities(current, causal_view, image_features),
        probabilities(current, spurious_view, image_features),
        config.orthogonality_weight,
        config.uniformity_weight,
      )
      return loss, terms

    names = ("centering", "prompts") if config.train_prompts else ("centering",)
    trainable = {k: adapted[k] for k in names}
    frozen = {k: v for k, v in adapted.items() if k not in names}
    opt_state = optimizer.init(trainable)

    def step(carry, _):
      trainable, opt_state = carry
      (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        trainable, frozen
      )
      updates, opt_state = optimizer.update(grads, opt_state, trainable)
      return (optax.apply_updates(trainable, updates), opt_state), loss

    (trainable, _), losses = jax.lax.scan(
      step, (trainable, opt_state), None, length=config.num_steps
    )
    adapted = {**frozen, **trainable}
    final_loss, terms = loss_fn(trainable, frozen)

    predicted = images if config.predict_on == "full" else causal_view
    logits = cosine_logits(
      encoder.encode_image(encoder_params, predicted),
      text_features(adapted, image_features),
      encoder.logit_scale,
    )
    initial_loss = losses[0] if config.num_steps else final_loss
    metrics = {"initial_loss": initial_loss, "loss": final_loss, **terms}
    return logits, adapted, metrics

  return BiPrompt(init=init, adapt=jax.jit(adapt), config=config)


def predict_with_biprompt(
  method: BiPrompt,
  prompt_params: PyTree,
  images: np.ndarray,
  batch_size: int,
) -> np.ndarray:
  """Adapts on consecutive test batches and returns `[num_images, classes]`.

  With `config.episodic` every batch starts from `prompt_params`, else
  from the previous batch's adapted values. The last batch is padded with
  copies of its first row to `batch_size`, so every call compiles once.
  The copies take part in that batch's adaptation, and their predictions
  are dropped.
  """
  episodic = method.config.episodic
  adapt = method.adapt
  start = method.init(prompt_params)
  adapted = start
  outputs = []
  for begin in range(0, len(images), batch_size):
    batch = np.asarray(images[begin : begin + batch_size])
    size = len(batch)
    if size < batch_size:
      batch = np.concatenate(
        [batch, np.repeat(batch[:1], batch_size - size, axis=0)]
      )
    logits, adapted, _ = adapt(start if episodic else adapted, batch)
    outputs.append(np.asarray(logits)[:size])
  return np.concatenate(outputs)
