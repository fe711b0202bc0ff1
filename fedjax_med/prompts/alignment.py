"""Aligns an image tower with a frozen text tower, standing in for CLIP.

Prompt learning assumes a dual encoder whose towers already share an
embedding space. With no pretrained CLIP on the machine, this module trains
the image tower on pooled labelled images so that each image's feature is
closest to the text feature of its class prompt. The text tower and
`logit_scale` stay fixed. With one text per class, the image-to-text half of
CLIP's symmetric loss is the cross-entropy of
`logit_scale * cos(f(x), t_c)` over the classes, which is what this trains.
The text-to-image half is left out because a batch contains several images per
class. Several templates are averaged into one feature per class, as in
CLIP's prompt ensembling.

The result is a stand-in for pretraining on public data, not CLIP: the
image tower is trained on only the classes and images it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_med import losses
from fedjax_med.models.dual_encoder import (
  DEFAULT_TEMPLATE,
  DualEncoder,
  class_prompts,
  cosine_logits,
  encode_texts,
  l2_normalize,
)

PyTree = Any


def class_text_features(
  encoder: DualEncoder,
  params: PyTree,
  class_names: Sequence[str],
  templates: Sequence[str] = (DEFAULT_TEMPLATE,),
) -> jax.Array:
  """Averages each class's template features, `[num_classes, embed_dim]`."""
  features = [
    encode_texts(encoder, params, class_prompts(class_names, template))
    for template in templates
  ]
  return l2_normalize(jnp.mean(jnp.stack(features), axis=0))


def align_image_tower(
  encoder: DualEncoder,
  params: PyTree,
  images: np.ndarray,
  labels: np.ndarray,
  class_names: Sequence[str],
  *,
  templates: Sequence[str] = (DEFAULT_TEMPLATE,),
  num_steps: int = 300,
  batch_size: int = 64,
  learning_rate: float = 3e-3,
  seed: int = 0,
) -> tuple[PyTree, list[float]]:
  """Trains `params["image"]` with Adam; `params["text"]` is unchanged.

  Args:
    encoder: The towers.
    params: Their weights, `{"image": ..., "text": ...}`.
    images: `[num_images, height, width, channels]`.
    labels: `[num_images]` ints in `[0, len(class_names))`.
    class_names: One name per label.
    templates: Prompts with `{}` for the class name, averaged per class.
    num_steps: Adam steps.
    batch_size: Images per step, drawn with replacement.
    learning_rate: Adam's learning rate.
    seed: Seed of the batch draws.

  Returns:
    `(params, losses)`: the aligned weights and each step's training loss.
  """
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
    raise ValueError(
      f"labels span [{labels.min()}, {labels.max()}] but there are "
      f"{len(class_names)} class names; pass one name per label."
    )
  text_features = class_text_features(encoder, params, class_names, templates)
  optimizer = optax.adam(learning_rate)
  images = jnp.asarray(images)
  labels = jnp.asarray(labels, jnp.int32)

  def loss_fn(image_params, x, y):
    features = encoder.encode_image({**params, "image": image_params}, x)
    logits = cosine_logits(features, text_features, encoder.logit_scale)
    return jnp.mean(losses.cross_entropy(logits, y))

  @jax.jit
  def train(image_params, key):
    def step(carry, step_key):
      image_params, opt_state = carry
      rows = jax.random.randint(step_key, (batch_size,), 0, images.shape[0])
      loss, grads = jax.value_and_grad(loss_fn)(
        image_params, images[rows], labels[rows]
      )
      updates, opt_state = optimizer.update(grads, opt_state, image_params)
      return (optax.apply_updates(image_params, updates), opt_state), loss

    keys = jax.random.split(key, num_steps)
    (image_params, _), step_losses = jax.lax.scan(
      step, (image_params, optimizer.init(image_params)), keys
    )
    return image_params, step_losses

  image_params, step_losses = train(params["image"], jax.random.PRNGKey(seed))
  return {**params, "image": image_params}, [float(v) for v in step_losses]
