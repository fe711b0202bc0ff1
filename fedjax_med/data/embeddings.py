"""Embedding datasets: a frozen feature extractor applied to pooled data.

FedHypeVAE models embeddings of a frozen encoder. `digits_embedding_source`
makes such embeddings without a download: it sets aside a stratified public
split of the scikit-learn digits (`public_fraction`, default 30%), trains an
MLP `64 -> 64 -> embedding_dim -> 10` on that split alone (full-batch Adam,
`encoder_steps` steps, a fixed seed), freezes it, and maps every remaining
digit to its penultimate ReLU layer. The embeddings are standardized with
the public split's mean and standard deviation. So neither the encoder nor
the normalizer has seen a record that the federation trains or tests on, as
with a foundation encoder pretrained on public data.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_med.data.sklearn_sources import ArraySource, load_digits_arrays


class _Extractor(nn.Module):
  embedding_dim: int
  num_classes: int

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(64)(x))
    features = nn.relu(nn.Dense(self.embedding_dim)(h))
    return nn.Dense(self.num_classes)(features), features


def public_split(
  labels: np.ndarray, public_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """Returns `(public, private)` indices, stratified by class."""
  if not 0 < public_fraction < 1:
    raise ValueError(
      f"public_fraction={public_fraction} must be in (0, 1); use e.g. 0.3."
    )
  rng = np.random.default_rng(seed)
  public = []
  for label in np.unique(labels):
    rows = rng.permutation(np.flatnonzero(labels == label))
    public.extend(rows[: int(round(public_fraction * rows.size))])
  public = np.sort(np.asarray(public, np.int64))
  private = np.setdiff1d(np.arange(labels.size), public)
  return public, private


def digits_embedding_source(
  *,
  public_fraction: float = 0.3,
  embedding_dim: int = 32,
  encoder_steps: int = 500,
  seed: int = 0,
) -> ArraySource:
  """Returns the private digits embedded by an encoder trained on public ones.

  Args:
    public_fraction: Share of each class kept for training the encoder.
    embedding_dim: Width of the embeddings.
    encoder_steps: Full-batch Adam steps (learning rate 0.01) on the public
      split.
    seed: Seed of the split and the encoder's initialization.

  Returns:
    The private rows' embeddings `[n, embedding_dim]` and labels.
  """
  source = load_digits_arrays(as_images=False)
  public, private = public_split(source.y, public_fraction, seed)
  module = _Extractor(embedding_dim, source.num_classes)
  x_public = jnp.asarray(source.x[public])
  y_public = jnp.asarray(source.y[public])
  params = module.init(jax.random.PRNGKey(seed), x_public[:1])["params"]
  optimizer = optax.adam(0.01)

  def loss_fn(p):
    logits, _ = module.apply({"params": p}, x_public)
    return jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(logits, y_public)
    )

  @jax.jit
  def train(p):
    def step(carry, _):
      p, state = carry
      updates, state = optimizer.update(jax.grad(loss_fn)(p), state, p)
      return (optax.apply_updates(p, updates), state), None

    (p, _), _ = jax.lax.scan(step, (p, optimizer.init(p)), None, encoder_steps)
    return p

  params = train(params)

  def embed(x):
    return np.asarray(module.apply({"params": params}, jnp.asarray(x))[1])

  public_features = embed(source.x[public])
  mean = public_features.mean(axis=0)
  std = public_features.std(axis=0) + 1e-3
  features = (embed(source.x[private]) - mean) / std
  return ArraySource(
    x=features.astype(np.float32),
    y=source.y[private],
    num_classes=source.num_classes,
    feature_names=tuple(f"embedding_{i}" for i in range(embedding_dim)),
  )
