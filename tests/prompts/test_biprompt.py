"""BiPrompt's closed forms, erasure, saliency and test-time adaptation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med import prompts as bp
from fedjax_med.models import dual_encoder as dual
from fedjax_med.models.small_towers import small_dual_encoder
from fedjax_med.prompts.coop import CoOpConfig, coop

KEY = jax.random.PRNGKey(0)
NAMES = dual.DIGIT_NAMES[:3]


@pytest.fixture(scope="module")
def towers():
  return small_dual_encoder(KEY)


def _unit_rows(shape, seed=0):
  rows = np.random.default_rng(seed).normal(size=shape)
  return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def test_centering_zero_is_identity():
  features = jnp.asarray(_unit_rows((4, 5)))
  np.testing.assert_allclose(
    bp.balanced_text_features(features, 0.0), features, rtol=1e-6
  )


def test_centering_one_removes_mean():
  features = _unit_rows((4, 5))
  centered = features - features.mean(axis=0)
  expected = centered / np.linalg.norm(centered, axis=-1, keepdims=True)
  balanced = bp.balanced_text_features(jnp.asarray(features), 1.0)
  np.testing.assert_allclose(balanced, expected, rtol=1e-5)


def test_vector_centering_per_feature():
  features = _unit_rows((3, 2))
  centering = np.asarray([0.0, 1.0])
  mean = features.mean(axis=0)
  shifted = features - centering * mean
  expected = shifted / np.linalg.norm(shifted, axis=-1, keepdims=True)
  balanced = bp.balanced_text_features(jnp.asarray(features), centering)
  np.testing.assert_allclose(balanced, expected, rtol=1e-5)


def test_loss_terms_by_hand():
  causal = np.asarray([[0.7, 0.2, 0.1], [1.0 / 3, 1.0 / 3, 1.0 / 3]])
  spurious = np.asarray([[0.1, 0.1, 0.8], [0.5, 0.25, 0.25]])
  loss, terms = bp.debiasing_loss(
    jnp.asarray(causal), jnp.asarray(spurious), 2.0, 0.5
  )
  entropy = -np.sum(causal * np.log(causal), axis=-1).mean()
  inner = np.sum(causal * spurious, axis=-1).mean()
  kl = np.sum(spurious * np.log(spurious / (1.0 / 3)), axis=-1).mean()
  np.testing.assert_allclose(terms["entropy"], entropy, rtol=1e-6)
  np.testing.assert_allclose(terms["orthogonality"], inner, rtol=1e-6)
  np.testing.assert_allclose(terms["uniformity"], kl, rtol=1e-5)
  np.testing.assert_allclose(loss, entropy + 2.0 * inner + 0.5 * kl, rtol=1e-5)


def test_loss_limits():
  uniform = jnp.full((2, 4), 0.25)
  one_hot = jnp.eye(4)[:2]
  other = jnp.eye(4)[2:]
  _, terms = bp.debiasing_loss(one_hot, uniform, 1.0, 1.0)
  np.testing.assert_allclose(terms["entropy"], 0.0, atol=1e-6)
  np.testing.assert_allclose(terms["uniformity"], 0.0, atol=1e-6)
  _, terms = bp.debiasing_loss(one_hot, other, 1.0, 1.0)
  np.testing.assert_allclose(terms["orthogonality"], 0.0, atol=1e-7)
  np.testing.assert_allclose(terms["uniformity"], np.log(4.0), rtol=1e-6)


def test_erase_views_split_patches():
  images = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 4, 4, 2)))
  saliency = np.zeros((2, 4, 4), np.float32)
  saliency[0, 2:, :2] = 5.0  # Image 0: bottom-left patch is the most salient.
  saliency[1, :2, 2:] = 5.0  # Image 1: top-right patch.
  causal_view, spurious_view, mask = bp.erase_views(
    images, jnp.asarray(saliency), patch_size=2, causal_fraction=0.25
  )
  assert int(mask[0].sum()) == 4
  assert bool(mask[0, 2:, :2].all())
  assert bool(mask[1, :2, 2:].all())

  fill = images.mean(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(causal_view + spurious_view, images + fill)
  keep = np.asarray(mask)[..., None]
  np.testing.assert_allclose(
    np.where(keep, causal_view, 0.0), np.where(keep, images, 0.0)
  )
  np.testing.assert_allclose(
    np.where(keep, 0.0, spurious_view), np.where(keep, 0.0, images)
  )


def test_erase_views_bad_patch_raises():
  with pytest.raises(ValueError, match="patch_size=3 does not divide"):
    bp.erase_views(jnp.zeros((1, 4, 4, 1)), jnp.zeros((1, 4, 4)), 3, 0.5)


def test_num_causal_patches_bounds():
  assert bp.num_causal_patches(16, 0.5) == 8
  assert bp.num_causal_patches(16, 0.01) == 1
  assert bp.num_causal_patches(16, 0.99) == 15


def _left_half_encoder():
  # An image tower that reads only the left half of 4x4 images.
  weights = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)))

  def encode_image(params, images):
    del params
    left = images[:, :, :2, 0].reshape(images.shape[0], -1)
    return dual.l2_normalize(jnp.tanh(left) @ weights)

  return dual.DualEncoder(
    encode_image=encode_image,
    embed_tokens=None,
    encode_text_from_embeddings=None,
    tokenize=None,
    logit_scale=10.0,
    token_width=3,
    embed_dim=3,
    max_length=4,
  )


def test_saliency_ignores_unread_pixels():
  encoder = _left_half_encoder()
  images = jnp.asarray(np.random.default_rng(1).uniform(size=(3, 4, 4, 1)))
  text_features = jnp.asarray(_unit_rows((2, 3)))
  saliency = bp.gradient_saliency(encoder, None, text_features, images)
  assert saliency.shape == (3, 4, 4)
  np.testing.assert_array_equal(saliency[:, :, 2:], 0.0)
  assert float(saliency[:, :, :2].min()) > 0.0


def _images(n, seed=1):
  return jax.random.uniform(jax.random.PRNGKey(seed), (n, 8, 8, 1))


def test_zero_steps_give_balanced_zero_shot(towers):
  encoder, params = towers
  config = CoOpConfig(num_context=5, init_words="a photo of the digit")
  learner = coop(encoder, params, config)
  method = bp.biprompt(
    encoder, params, learner, NAMES, bp.BiPromptConfig(num_steps=0)
  )
  adapted = method.init(learner.init(KEY))
  logits, _, _ = jax.jit(method.adapt)(adapted, _images(4))
  texts = dual.class_prompts(NAMES)
  text_features = bp.balanced_text_features(
    dual.encode_texts(encoder, params, texts), 1.0
  )
  expected = dual.cosine_logits(
    encoder.encode_image(params, _images(4)), text_features, 100.0
  )
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-3)


def test_adaptation_lowers_loss_and_compiles_once(towers):
  encoder, params = towers
  learner = coop(encoder, params, CoOpConfig(num_context=2))
  config = bp.BiPromptConfig(num_steps=3, learning_rate=1e-3)
  method = bp.biprompt(encoder, params, learner, NAMES, config)
  traces = []

  def counted(adapted, images):
    traces.append(1)
    return method.adapt(adapted, images)

  adapt = jax.jit(counted)
  start = method.init(learner.init(KEY))
  for seed in range(3):
    _, adapted, metrics = adapt(start, _images(6, seed))
    assert float(metrics["loss"]) < float(metrics["initial_loss"])
  assert len(traces) == 1
  moved = adapted["prompts"]["context"] - start["prompts"]["context"]
  assert float(jnp.abs(moved).max()) > 0


def test_frozen_prompts_stay(towers):
  encoder, params = towers
  learner = coop(encoder, params, CoOpConfig(num_context=2))
  config = bp.BiPromptConfig(num_steps=2, train_prompts=False)
  method = bp.biprompt(encoder, params, learner, NAMES, config)
  start = method.init(learner.init(KEY))
  _, adapted, _ = jax.jit(method.adapt)(start, _images(4))
  np.testing.assert_array_equal(
    adapted["prompts"]["context"], start["prompts"]["context"]
  )
  assert float(adapted["centering"]) != config.centering_init


def test_episodic_batches_are_independent(towers):
  encoder, params = towers
  learner = coop(encoder, params, CoOpConfig(num_context=2))
  prompt_params = learner.init(KEY)
  images = np.asarray(_images(8))
  config = bp.BiPromptConfig(num_steps=2, learning_rate=0.01)
  episodic = bp.biprompt(encoder, params, learner, NAMES, config)
  # The same compiled adaptation, carried from batch to batch.
  carried = episodic._replace(config=config._replace(episodic=False))
  results = {}
  for is_episodic, method in ((True, episodic), (False, carried)):
    results[is_episodic] = bp.predict_with_biprompt(
      method, prompt_params, images, batch_size=4
    )
  # Episodic: the second batch alone gives the same logits.
  alone = bp.predict_with_biprompt(episodic, prompt_params, images[4:], 4)
  np.testing.assert_allclose(results[True][4:], alone, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(results[True][:4], results[False][:4], rtol=1e-5)
  assert float(np.abs(results[True][4:] - results[False][4:]).max()) > 1e-6


def test_invalid_config_raises(towers):
  encoder, params = towers
  learner = coop(encoder, params)
  with pytest.raises(ValueError, match="centering='matrix' is unknown"):
    bp.biprompt(
      encoder, params, learner, NAMES, bp.BiPromptConfig(centering="matrix")
    )
  with pytest.raises(ValueError, match="causal_fraction=1.0 must lie"):
    bp.biprompt(
      encoder, params, learner, NAMES, bp.BiPromptConfig(causal_fraction=1.0)
    )
