"""Clipping bounds, per-layer sensitivity and per-leaf Gaussian noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.privacy import clipping

KEY = jax.random.PRNGKey(0)


def _random_tree(rng):
  """A tree of 1-4 leaves with random shapes and scales over many decades."""
  shapes = [(3,), (2, 3), (5, 1, 2), ()][: rng.integers(1, 5)]
  scale = 10.0 ** rng.uniform(-4, 4)
  return {
    f"leaf{i}": jnp.asarray(rng.normal(size=s) * scale, jnp.float32)
    for i, s in enumerate(shapes)
  }


@pytest.mark.parametrize("clip_norm", [1e-3, 0.7, 1.0, 250.0])
def test_clipped_norm_never_exceeds_bound(clip_norm):
  rng = np.random.default_rng(int(clip_norm * 1000))
  clip = jax.jit(clipping.clip_by_global_norm)
  for _ in range(300):
    tree = _random_tree(rng)
    clipped, norm = clip(tree, clip_norm)
    after = float(np.sqrt(sum(np.sum(np.square(v)) for v in clipped.values())))
    assert after <= clip_norm * (1 + 1e-6)
    before = float(np.sqrt(sum(np.sum(np.square(v)) for v in tree.values())))
    np.testing.assert_allclose(float(norm), before, rtol=1e-5)
    if before <= clip_norm:
      jax.tree.map(np.testing.assert_array_equal, clipped, tree)
    else:
      # Clipping rescales; it never changes the direction.
      np.testing.assert_allclose(after, clip_norm, rtol=1e-5)
      for key, leaf in tree.items():
        np.testing.assert_allclose(
          clipped[key], leaf * (clip_norm / before), rtol=1e-5, atol=1e-30
        )


def test_clip_zero_tree_stays_zero():
  tree = {"a": jnp.zeros((4,)), "b": jnp.zeros((2, 2))}
  clipped, norm = clipping.clip_by_global_norm(tree, 1.0)
  assert float(norm) == 0.0
  for leaf in jax.tree.leaves(clipped):
    assert np.all(np.isfinite(leaf))
    assert np.all(leaf == 0)


@pytest.mark.parametrize(
  "thresholds, expected",
  [((1.0,) * 8, 2.828427), ((0.5, 1.0, 2.0), 2.291288)],
)
def test_per_layer_sensitivity_is_l2_of_thresholds(thresholds, expected):
  assert clipping.per_layer_sensitivity(thresholds) == pytest.approx(
    expected, abs=1e-6
  )


def test_per_layer_clipping_bounds_each_leaf():
  rng = np.random.default_rng(1)
  thresholds = (0.5, 1.0, 2.0)
  sensitivity = clipping.per_layer_sensitivity(thresholds)
  for _ in range(100):
    tree = [
      jnp.asarray(rng.normal(size=(4,)) * 5, jnp.float32) for _ in range(3)
    ]
    clipped, norms = clipping.clip_per_layer(tree, thresholds)
    for leaf, bound, before, original in zip(
      clipped, thresholds, norms, tree, strict=True
    ):
      assert float(jnp.linalg.norm(leaf)) <= bound * (1 + 1e-6)
      np.testing.assert_allclose(before, np.linalg.norm(original), rtol=1e-5)
    total = float(np.sqrt(sum(np.sum(np.square(x)) for x in clipped)))
    assert total <= sensitivity * (1 + 1e-6)


def test_per_layer_clipping_rejects_wrong_count():
  with pytest.raises(ValueError, match="2 per-layer clip norms"):
    clipping.clip_per_layer([jnp.ones(2)] * 3, (1.0, 1.0))


def test_per_layer_sensitivity_rejects_zero():
  with pytest.raises(ValueError, match="clip norm 0.0 must be positive"):
    clipping.per_layer_sensitivity((1.0, 0.0))


def test_noise_leaves_never_share_values():
  tree = {"a": jnp.zeros((3,)), "b": jnp.zeros((2, 3))}
  draw = jax.jit(lambda key: clipping.gaussian_noise_like(tree, 1.0, key))
  noise = draw(KEY)
  assert noise["a"].shape == (3,)
  assert noise["b"].shape == (2, 3)
  assert not np.isin(np.asarray(noise["a"]), np.asarray(noise["b"])).any()

  # A single key reused across these shapes would repeat the first values,
  # which is the failure this test guards against.
  shared_a = jax.random.normal(KEY, (3,))
  shared_b = jax.random.normal(KEY, (2, 3))
  np.testing.assert_array_equal(shared_a, shared_b.ravel()[:3])


def test_noise_leaves_uncorrelated_over_repeats():
  tree = {"a": jnp.zeros((3,)), "b": jnp.zeros((2, 3))}
  keys = jax.random.split(KEY, 10_000)
  noise = jax.vmap(lambda k: clipping.gaussian_noise_like(tree, 1.0, k))(keys)
  a = np.asarray(noise["a"])
  b = np.asarray(noise["b"]).reshape(10_000, 6)
  for i in range(3):
    for j in range(6):
      r = np.corrcoef(a[:, i], b[:, j])[0, 1]
      assert abs(r) < 0.04, (i, j, r)


@pytest.mark.parametrize("stddev", [0.1, 2.5])
def test_noise_has_configured_stddev(stddev):
  tree = {"w": jnp.zeros((200, 50)), "b": jnp.zeros((50,), jnp.bfloat16)}
  noisy = clipping.add_gaussian_noise(tree, stddev, KEY)
  assert noisy["b"].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.std(noisy["w"]), stddev, rtol=0.03)
  assert abs(float(np.mean(noisy["w"]))) < 4 * stddev / 100


@pytest.mark.parametrize(
  "clip_norm, noise_multiplier, message",
  [
    (0.0, 1.0, "clip_norm=0.0 must be a positive"),
    (-1.0, 1.0, "clip_norm=-1.0 must be a positive"),
    (float("inf"), 1.0, "clip_norm=inf"),
    (1.0, -0.5, "noise_multiplier=-0.5 must be a non-negative"),
    (1.0, float("nan"), "noise_multiplier=nan"),
  ],
)
def test_validate_dp_settings_rejects(clip_norm, noise_multiplier, message):
  with pytest.raises(ValueError, match=message):
    clipping.validate_dp_settings(clip_norm, noise_multiplier)
