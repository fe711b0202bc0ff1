"""Multi-domain digits: each acquisition transform and the site split."""

import numpy as np
import pytest

from fedjax_med.data import multidomain
from fedjax_med.data.registry import load_dataset


def _crafted(num_images=3, seed=0):
  rng = np.random.default_rng(seed)
  return rng.uniform(0.0, 1.0, size=(num_images, 8, 8, 1)).astype(np.float32)


def test_inversion_maps_x_to_one_minus_x():
  x = _crafted()
  out = multidomain.apply_domain("inverted", x, np.arange(3), 0)
  np.testing.assert_allclose(out, 1.0 - x, atol=1e-7)


def test_blur_preserves_mean():
  x = _crafted()
  out = multidomain.apply_domain("blur", x, np.arange(3), 0)
  np.testing.assert_allclose(
    out.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), rtol=1e-5
  )
  assert out.std() < x.std()


def test_blur_spreads_point_as_kernel():
  x = np.zeros((1, 8, 8, 1), np.float32)
  x[0, 4, 4, 0] = 1.0
  out = multidomain.apply_domain("blur", x, np.arange(1), 0)[0, :, :, 0]
  kernel = multidomain.gaussian_kernel(multidomain.BLUR_SIGMA)
  radius = kernel.size // 2
  expected = np.zeros((8, 8))
  expected[4 - radius : 5 + radius, 4 - radius : 5 + radius] = np.outer(
    kernel, kernel
  )
  np.testing.assert_allclose(out, expected, atol=1e-6)


def test_low_resolution_constant_on_blocks():
  x = _crafted()
  out = multidomain.apply_domain("low_resolution", x, np.arange(3), 0)
  blocks = out.reshape(3, 4, 2, 4, 2, 1)
  assert np.all(blocks == blocks[:, :, :1, :, :1, :])
  np.testing.assert_allclose(
    blocks[:, :, 0, :, 0, :],
    x.reshape(3, 4, 2, 4, 2, 1).mean(axis=(2, 4)),
    rtol=1e-6,
  )


def test_contrast_shrinks_std_keeps_mean():
  x = _crafted()
  out = multidomain.apply_domain("contrast", x, np.arange(3), 0)
  np.testing.assert_allclose(
    out.mean(axis=(1, 2)), x.mean(axis=(1, 2)), rtol=1e-5
  )
  np.testing.assert_allclose(
    out.std(axis=(1, 2)),
    multidomain.CONTRAST_FACTOR * x.std(axis=(1, 2)),
    rtol=1e-5,
  )


def test_noise_deterministic_under_seed():
  x = np.full((4, 8, 8, 1), 0.5, np.float32)
  ids = np.arange(10, 14)
  first = multidomain.apply_domain("noise", x, ids, 7)
  again = multidomain.apply_domain("noise", x, ids, 7)
  other_seed = multidomain.apply_domain("noise", x, ids, 8)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other_seed)
  # An image's noise depends on its id, not on the rest of the batch.
  alone = multidomain.apply_domain("noise", x[2:3], ids[2:3], 7)
  np.testing.assert_array_equal(alone, first[2:3])
  assert abs(float((first - x).std()) - multidomain.NOISE_STD) < 0.03


def test_every_domain_stays_in_unit_range():
  x = _crafted(num_images=5)
  for domain in multidomain.DOMAINS:
    out = multidomain.apply_domain(domain, x, np.arange(5), 0)
    assert out.shape == x.shape, domain
    assert out.min() >= 0.0, domain
    assert out.max() <= 1.0, domain


def test_clean_returns_input():
  x = _crafted()
  out = multidomain.apply_domain("clean", x, np.arange(3), 0)
  np.testing.assert_array_equal(out, x)


def test_unknown_domain_raises():
  with pytest.raises(ValueError, match="unknown domains \\['sepia'\\]"):
    multidomain.load_digits_multidomain(domains=("clean", "sepia"))
  with pytest.raises(ValueError, match="unknown domain 'sepia'"):
    multidomain.apply_domain("sepia", _crafted(), np.arange(3), 0)


def test_repeated_domain_raises():
  with pytest.raises(ValueError, match="listed twice"):
    multidomain.load_digits_multidomain(domains=("blur", "blur"))


def test_too_many_examples_per_site_raises():
  with pytest.raises(ValueError, match="examples_per_site=400"):
    multidomain.load_digits_multidomain(examples_per_site=400)


def test_site_partition_disjoint_balanced():
  labels = np.repeat(np.arange(10), 37)
  parts = multidomain.stratified_site_partition(labels, 6, seed=1)
  union = np.concatenate(parts)
  assert len(union) == len(np.unique(union)) == labels.size
  counts = np.stack([np.bincount(labels[p], minlength=10) for p in parts])
  assert np.all(counts.max(axis=0) - counts.min(axis=0) <= 1)
  sizes = [len(p) for p in parts]
  assert max(sizes) - min(sizes) <= 1


def test_loaded_sites_disjoint_nonempty_balanced():
  data = load_dataset("digits_multidomain")
  assert data.client_names == multidomain.DOMAINS
  assert data.feature_shape == (8, 8, 1)
  assert np.all(data.train.num_examples > 0)
  assert np.all(data.test.num_examples > 0)
  total = data.train.num_examples.sum() + data.test.num_examples.sum()
  assert total == 1797

  counts = np.stack(
    [
      np.bincount(
        np.concatenate([data.train.client(k)[1], data.test.client(k)[1]]),
        minlength=10,
      )
      for k in range(data.num_clients)
    ]
  )
  assert np.all(counts.max(axis=0) - counts.min(axis=0) <= 1)


def test_loaded_sites_carry_their_shift():
  data = load_dataset("digits_multidomain", domains=("clean", "inverted"))
  clean, _ = data.train.client(0)
  inverted, _ = data.train.client(1)
  # Digit strokes are a minority of pixels, so inversion flips a dark
  # background to a bright one.
  assert clean.mean() < 0.4
  assert inverted.mean() > 0.6


def test_examples_per_site_subsample_balanced():
  data = load_dataset(
    "digits_multidomain",
    domains=("clean", "blur", "noise"),
    examples_per_site=50,
    test_fraction=0.2,
  )
  sizes = data.train.num_examples + data.test.num_examples
  np.testing.assert_array_equal(sizes, [50, 50, 50])
  for k in range(3):
    labels = np.concatenate([data.train.client(k)[1], data.test.client(k)[1]])
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), 5)


def test_loader_deterministic_by_seed():
  a = load_dataset("digits_multidomain", seed=3)
  b = load_dataset("digits_multidomain", seed=3)
  np.testing.assert_array_equal(a.train.x, b.train.x)
  np.testing.assert_array_equal(a.test.y, b.test.y)


def test_flat_features():
  data = load_dataset("digits_multidomain", as_images=False)
  assert data.feature_shape == (64,)
