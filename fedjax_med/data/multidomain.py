"""Multi-domain digits: one real image set seen through different acquisitions.

The 1,797 scikit-learn digits (8x8 grey images, pixel counts 0..16 rescaled
to [0, 1] by `load_digits_arrays`) are split into sites that are IID in the
label (stratified: every class's count differs by at most one between sites).
Each site then applies one fixed, deterministic transform to all its images,
so the only difference between sites is a known feature shift, as between
scanners or protocols in different hospitals:

- "clean": no change.
- "contrast": each image is pulled towards its own mean,
  `m + CONTRAST_FACTOR * (x - m)`, which keeps the mean and multiplies the
  standard deviation by `CONTRAST_FACTOR`.
- "blur": a separable Gaussian blur with standard deviation `BLUR_SIGMA`
  pixels and periodic (wrap-around) borders. A normalized kernel with
  periodic borders keeps each image's mean exactly.
- "noise": additive Gaussian noise with standard deviation `NOISE_STD`,
  clipped to [0, 1] as a saturating sensor would be. Image `i`'s noise is
  drawn once from a generator seeded with `(seed, i)`, where `i` indexes the
  pooled scikit-learn array, so it does not depend on the site split.
- "inverted": intensity inversion, `1 - x`.
- "low_resolution": each 2x2 block is replaced by its mean (a 2x
  downsampling followed by nearest-neighbour upsampling).

Every transformed pixel lies in [0, 1]. Clients are named after their
domains, in the order given, and each keeps its own stratified train/test
split (`partition.federate`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from absl import logging

from fedjax_med.data import partition as partition_lib
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.data.sklearn_sources import load_digits_arrays

CONTRAST_FACTOR = 0.4
BLUR_SIGMA = 1.0
NOISE_STD = 0.2


def _check_images(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  if x.ndim != 4:
    raise ValueError(
      f"images must have shape [num_images, height, width, channels], got "
      f"{x.shape}."
    )
  return x


def apply_contrast(x: np.ndarray) -> np.ndarray:
  """Shrinks every image's pixels towards its own mean (per channel)."""
  x = _check_images(x)
  mean = x.mean(axis=(1, 2), keepdims=True)
  return mean + CONTRAST_FACTOR * (x - mean)


def gaussian_kernel(sigma: float) -> np.ndarray:
  """Returns the normalized 1-D Gaussian kernel cut at 2 sigma (rounded up)."""
  radius = max(int(np.ceil(2.0 * sigma)), 1)
  offsets = np.arange(-radius, radius + 1, dtype=np.float64)
  kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
  return kernel / kernel.sum()


def apply_blur(x: np.ndarray) -> np.ndarray:
  """Blurs with a separable Gaussian, periodic borders, along height, width."""
  x = _check_images(x).astype(np.float64)
  kernel = gaussian_kernel(BLUR_SIGMA)
  radius = kernel.size // 2
  for axis in (1, 2):
    offsets = range(-radius, radius + 1)
    x = sum(
      weight * np.roll(x, offset, axis=axis)
      for weight, offset in zip(kernel, offsets, strict=True)
    )
  return x.astype(np.float32)


def apply_noise(x: np.ndarray, image_ids: np.ndarray, seed: int) -> np.ndarray:
  """Adds clipped Gaussian noise, fixed per `(seed, image_id)`.

  Args:
    x: Images, shape `[num_images, height, width, channels]`.
    image_ids: Non-negative id of every image, shape `[num_images]`.
    seed: Non-negative seed shared by all images.
  """
  x = _check_images(x)
  image_ids = np.asarray(image_ids, np.int64)
  if image_ids.shape != x.shape[:1]:
    raise ValueError(
      f"image_ids has shape {image_ids.shape}, expected ({x.shape[0]},)."
    )
  noise = np.stack(
    [
      np.random.default_rng([seed, int(i)]).normal(
        0.0, NOISE_STD, size=x.shape[1:]
      )
      for i in image_ids
    ]
  ).reshape(x.shape)
  return np.clip(x + noise, 0.0, 1.0).astype(np.float32)


def apply_inversion(x: np.ndarray) -> np.ndarray:
  """Maps every pixel `v` in [0, 1] to `1 - v`."""
  return 1.0 - _check_images(x)


def apply_low_resolution(x: np.ndarray) -> np.ndarray:
  """Replaces every 2x2 block by its mean. Height and width must be even."""
  x = _check_images(x)
  n, height, width, channels = x.shape
  if height % 2 or width % 2:
    raise ValueError(
      f"low_resolution needs even height and width, got {height}x{width}."
    )
  blocks = x.reshape(n, height // 2, 2, width // 2, 2, channels)
  small = blocks.mean(axis=(2, 4))
  return np.repeat(np.repeat(small, 2, axis=1), 2, axis=2)


# Each transform takes (images, pooled image ids, seed).
_TRANSFORMS: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {
  "clean": lambda x, ids, seed: _check_images(x).copy(),
  "contrast": lambda x, ids, seed: apply_contrast(x),
  "blur": lambda x, ids, seed: apply_blur(x),
  "noise": apply_noise,
  "inverted": lambda x, ids, seed: apply_inversion(x),
  "low_resolution": lambda x, ids, seed: apply_low_resolution(x),
}
DOMAINS = tuple(_TRANSFORMS)


def apply_domain(
  domain: str, x: np.ndarray, image_ids: np.ndarray, seed: int
) -> np.ndarray:
  """Applies `domain`'s transform to images in [0, 1].

  Args:
    domain: One of `DOMAINS`.
    x: Images, shape `[num_images, height, width, channels]`.
    image_ids: Id of every image, shape `[num_images]`, used by "noise".
    seed: Seed of the "noise" domain.

  Returns:
    The transformed images, float32, same shape, values in [0, 1].

  Raises:
    ValueError: If `domain` is unknown.
  """
  if domain not in _TRANSFORMS:
    raise ValueError(f"unknown domain {domain!r}; use one of {list(DOMAINS)}.")
  return _TRANSFORMS[domain](x, np.asarray(image_ids), seed)


def stratified_site_partition(
  labels: np.ndarray, num_sites: int, seed: int
) -> list[np.ndarray]:
  """Splits examples into sites with the same label mix.

  The examples are shuffled, sorted by label (stably), and dealt to the
  sites in turn. Every class's count then differs by at most one between
  sites, and so does every site's size.

  Returns:
    One sorted int64 index array per site.
  """
  labels = np.asarray(labels)
  if num_sites < 1 or num_sites > labels.size:
    raise ValueError(
      f"num_sites={num_sites} must be between 1 and the {labels.size} examples."
    )
  rng = np.random.default_rng(seed)
  shuffled = rng.permutation(labels.size)
  order = shuffled[np.argsort(labels[shuffled], kind="stable")]
  return [np.sort(order[k::num_sites]) for k in range(num_sites)]


def _balanced_subset(
  labels: np.ndarray, size: int, rng: np.random.Generator
) -> np.ndarray:
  # Rank each example within its class at random, then take the lowest
  # ranks first, one class at a time, so class counts differ by at most one
  # while every class has examples left.
  rank = np.empty(labels.size, np.int64)
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    rank[members] = rng.permutation(members.size)
  order = np.lexsort((labels, rank))
  return np.sort(order[:size])


def _domain_summary(
  data: FederatedData, partitions: Sequence[np.ndarray], labels: np.ndarray
) -> str:
  lines = partition_lib.partition_summary(
    partitions,
    labels,
    num_classes=data.num_classes,
    client_names=data.client_names,
  ).splitlines()
  lines[0] += "  pixel mean, std (train)"
  for k in range(data.num_clients):
    x, _ = data.train.client(k)
    lines[k + 1] += f"  {x.mean():.3f}, {x.std():.3f}"
  return "\n".join(lines)


def load_digits_multidomain(
  *,
  domains: Sequence[str] = DOMAINS,
  examples_per_site: int = 0,
  test_fraction: float = 0.2,
  seed: int = 0,
  as_images: bool = True,
) -> FederatedData:
  """Loads digits split into one site per acquisition domain.

  Args:
    domains: Names from `DOMAINS`, one site each, without repeats.
    examples_per_site: Examples kept per site before the train/test split,
      chosen with balanced labels. 0 keeps all of the site's share (1797
      divided by the number of sites, give or take one).
    test_fraction: Share of each site held out for testing, in [0, 1).
    seed: Seed of the site split, the subsample, the noise and the
      train/test splits.
    as_images: If True, features have shape `[8, 8, 1]`; otherwise the
      transformed images are flattened to 64 features.

  Returns:
    The `FederatedData`, clients named and ordered as `domains`.

  Raises:
    ValueError: For an unknown or repeated domain, no domains, or a site
      with fewer examples than `examples_per_site`.
  """
  domains = tuple(str(d) for d in domains)
  if not domains:
    raise ValueError(f"domains is empty; pass some of {list(DOMAINS)}.")
  unknown = [d for d in domains if d not in _TRANSFORMS]
  if unknown:
    raise ValueError(
      f"unknown domains {unknown}; use names from {list(DOMAINS)}."
    )
  repeated = sorted({d for d in domains if domains.count(d) > 1})
  if repeated:
    raise ValueError(
      f"domains {repeated} are listed twice; each domain is one site, so "
      "list it once."
    )
  if examples_per_site < 0:
    raise ValueError(
      f"examples_per_site={examples_per_site} must be >= 0 (0 keeps all)."
    )

  source = load_digits_arrays(as_images=True)
  partitions = stratified_site_partition(source.y, len(domains), seed)
  if examples_per_site:
    smallest = min(len(p) for p in partitions)
    if examples_per_site > smallest:
      raise ValueError(
        f"examples_per_site={examples_per_site} exceeds the {smallest} "
        f"examples of the smallest of {len(domains)} sites; lower it or "
        "use 0 to keep all."
      )
    rng = np.random.default_rng(seed)
    partitions = [
      part[_balanced_subset(source.y[part], examples_per_site, rng)]
      for part in partitions
    ]

  x = np.zeros_like(source.x)
  for domain, part in zip(domains, partitions, strict=True):
    x[part] = apply_domain(domain, source.x[part], part, seed)
  if not as_images:
    x = x.reshape(x.shape[0], -1)

  data = partition_lib.federate(
    x,
    source.y,
    partitions,
    num_classes=source.num_classes,
    test_fraction=test_fraction,
    seed=seed,
    client_names=domains,
    name="digits_multidomain",
  )
  logging.info(
    "digits_multidomain sites:\n%s",
    _domain_summary(data, partitions, source.y),
  )
  return data
