"""Alignment of the small image tower with the frozen text tower."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.data.sklearn_sources import load_digits_arrays
from fedjax_med.models import dual_encoder as dual
from fedjax_med.models.small_towers import small_dual_encoder
from fedjax_med.prompts.alignment import align_image_tower


@pytest.mark.slow
def test_alignment_enables_zero_shot():
  encoder, params = small_dual_encoder(jax.random.PRNGKey(0))
  source = load_digits_arrays(as_images=True)
  train_x, train_y = source.x[:1200], source.y[:1200]
  test_x, test_y = source.x[1200:], source.y[1200:]

  def accuracy(params):
    logits = dual.zero_shot_logits(
      encoder, params, jnp.asarray(test_x), dual.DIGIT_NAMES
    )
    return float(np.mean(np.argmax(logits, axis=-1) == test_y))

  before = accuracy(params)
  aligned, step_losses = align_image_tower(
    encoder, params, train_x, train_y, dual.DIGIT_NAMES, num_steps=150
  )
  after = accuracy(aligned)
  assert after > 0.6
  assert after > before + 0.3
  assert np.mean(step_losses[-20:]) < np.mean(step_losses[:20])
  # The text tower is untouched.
  for new, old in zip(
    jax.tree.leaves(aligned["text"]),
    jax.tree.leaves(params["text"]),
    strict=True,
  ):
    np.testing.assert_array_equal(new, old)
