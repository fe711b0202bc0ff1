"""FedHypeVAE after training: DP class statistics, meta-codes, synthesis.

The server never receives a client code `v_i`, so it synthesizes with a code of
its own. `fit_meta_codes` finds the neutral meta-code

    v_o = argmin_v sum_y ||E_z[x(z, y)] - mu^_y||^2
                     + beta ||Cov[x(z, y)] - Sigma^_y||_F^2,

or, with `num_meta_codes > 1`, a mixture `sum_k pi_k h(v_k)` of generated
outputs with `pi` on the simplex, against class means and covariances
`(mu^_y, Sigma^_y)` that `release_class_statistics` releases through a
Gaussian mechanism. Expectations over z use fixed Monte Carlo draws, and
`Cov[x]` is the covariance of the decoder means plus the diagonal
observation variance.

`release_class_statistics` releases, per class, the count, the sum of
clipped embeddings and the sum of their outer products. Each record adds
`u = (x / R, 1, vec(x x^T) / R^2)` to its class's block, with `x` clipped to
L2 norm R, so `||u||_2 <= sqrt(3)` and the release is a Gaussian mechanism
of L2 sensitivity `sqrt(3)` under add/remove adjacency of one record. Every
client adds its own `N(0, (sigma_s sqrt(3))^2)` noise to its sums before
sending them, so each client's message on its own is the Gaussian mechanism
with noise multiplier `sigma_s`, and the accountant composes one unsampled
Gaussian event of multiplier `sigma_s` into every record's epsilon. The sum
of ten clients' noise is `sqrt(10)` times that of one central draw, the cost
of needing no trusted aggregator.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_med.models import hyper_cvae
from fedjax_med.privacy import clipping

STATISTICS_SENSITIVITY = math.sqrt(3.0)


class ClassStatistics(NamedTuple):
  """Released per-class statistics of the embeddings.

  Attributes:
    count: Noisy count per class, `[K]`.
    mean: Class means `[K, d_x]`.
    covariance: Class covariances `[K, d_x, d_x]`, symmetric.
  """

  count: jax.Array
  mean: jax.Array
  covariance: jax.Array


def client_statistic_sums(x, y, num_examples, num_classes, clip_norm):
  """Returns one client's scaled sums `(count, sum x / R, sum x x^T / R^2)`.

  Args:
    x: Padded embeddings `[n, d_x]`.
    y: Labels `[n]`.
    num_examples: Real rows; rows from it on are padding.
    num_classes: K.
    clip_norm: R, the bound each embedding is clipped to.
  """
  mask = (jnp.arange(x.shape[0]) < num_examples).astype(x.dtype)
  clipped = jax.vmap(lambda row: clipping.clip_by_global_norm(row, clip_norm))(
    x
  )[0]
  scaled = clipped / clip_norm
  onehot = jax.nn.one_hot(y, num_classes, dtype=x.dtype) * mask[:, None]
  count = jnp.sum(onehot, axis=0)
  first = onehot.T @ scaled
  second = jnp.einsum("nk,ni,nj->kij", onehot, scaled, scaled)
  return count, first, second


def release_class_statistics(
  x: jax.Array,
  y: jax.Array,
  num_examples: jax.Array,
  num_classes: int,
  *,
  clip_norm: float,
  noise_multiplier: float,
  key: jax.Array,
) -> ClassStatistics:
  """Releases class means and covariances of every client's embeddings.

  Args:
    x: Embeddings `[clients, examples, d_x]`.
    y: Labels `[clients, examples]`.
    num_examples: Real rows per client, `[clients]`.
    num_classes: K.
    clip_norm: R; embeddings are clipped to this L2 norm first.
    noise_multiplier: `sigma_s`; 0 releases the exact clipped statistics.
    key: Noise key; client `i` uses `fold_in(key, i)`.

  Returns:
    The statistics the server computes from the sum of noisy messages.
  """
  stddev = noise_multiplier * STATISTICS_SENSITIVITY

  def client_message(client_id):
    sums = client_statistic_sums(
      x[client_id],
      y[client_id],
      num_examples[client_id],
      num_classes,
      clip_norm,
    )
    return clipping.add_gaussian_noise(
      sums, stddev, jax.random.fold_in(key, client_id)
    )

  messages = jax.vmap(client_message)(jnp.arange(x.shape[0]))
  count, first, second = jax.tree.map(lambda a: jnp.sum(a, axis=0), messages)
  # NOTE: the noisy count divides the sums, so when its noise is comparable
  # to the class size (digits embeddings at noise multiplier 20) the means
  # and covariances are dominated by noise.
  safe = jnp.maximum(count, 1.0)
  mean = first / safe[:, None]
  moment = second / safe[:, None, None]
  moment = 0.5 * (moment + jnp.swapaxes(moment, 1, 2))
  covariance = moment - jnp.einsum("ki,kj->kij", mean, mean)
  return ClassStatistics(
    count=count,
    mean=mean * clip_norm,
    covariance=covariance * clip_norm**2,
  )


class SynthesisConfig(NamedTuple):
  """How the server synthesizes embeddings and trains its classifier.

  Attributes:
    num_meta_codes: 1 for the neutral meta-code, K > 1 for a mixture.
    meta_code_steps: Adam steps of the meta-code fit.
    meta_code_learning_rate: Its learning rate.
    covariance_weight: beta, the weight of the covariance match.
    monte_carlo_samples: Draws of z per class in the fit.
    latent_sampling: "class_prior" or "standard_normal" (see
      `hyper_cvae.sample_embeddings`).
    samples_per_class: Synthetic embeddings per class for the classifier.
    classifier_steps: Full-batch Adam steps of the linear classifier.
    classifier_learning_rate: Its learning rate.
    classifier_l2: Weight of the kernel's squared L2 norm.
    code_radius: r; meta-codes are projected onto `||v|| <= r` as the
      clients' codes are.
    seed: Folded into the synthesis key.
  """

  num_meta_codes: int = 1
  meta_code_steps: int = 200
  meta_code_learning_rate: float = 0.05
  covariance_weight: float = 1.0
  monte_carlo_samples: int = 64
  latent_sampling: str = "class_prior"
  samples_per_class: int = 200
  classifier_steps: int = 300
  classifier_learning_rate: float = 0.05
  classifier_l2: float = 1e-4
  code_radius: float = 5.0
  seed: int = 0


def project_to_ball(code: jax.Array, radius: float) -> jax.Array:
  """Scales `code` (last axis) onto the L2 ball of `radius` if outside it."""
  norm = jnp.linalg.norm(code, axis=-1, keepdims=True)
  return code * jnp.minimum(1.0, radius / jnp.maximum(norm, 1e-12))


def moment_matching_loss(model, phi, outputs, statistics, eps_z, beta):
  """Returns the meta-code objective for generated `outputs`.

  `eps_z [K, M, d_z]` are the fixed standard normal draws behind z.
  """
  num_classes = statistics.mean.shape[0]
  log_scale = phi["decoder"]["log_scale"]

  def per_class(y, e_z):
    mu, log_sigma = model.prior(phi, outputs, y)
    z = mu + jnp.exp(log_sigma) * e_z
    means = jax.vmap(lambda zz: model.decode_mean(phi, outputs, zz, y))(z)
    centre = jnp.mean(means, axis=0)
    centred = means - centre
    cov = centred.T @ centred / means.shape[0]
    cov = cov + jnp.diag(jnp.exp(2.0 * log_scale))
    return centre, cov

  centres, covs = jax.vmap(per_class)(jnp.arange(num_classes), eps_z)
  mean_error = jnp.sum((centres - statistics.mean) ** 2)
  cov_error = jnp.sum((covs - statistics.covariance) ** 2)
  return mean_error + beta * cov_error


def fit_meta_codes(model, phi, statistics, config: SynthesisConfig, key):
  """Fits the meta-code(s) and mixture weights to the class statistics.

  Returns:
    `(codes [num_meta_codes, d_v], weights [num_meta_codes])`. The neutral
    meta-code starts at 0; mixture components start at small random codes.
  """
  num_classes = statistics.mean.shape[0]
  code_key, eps_key = jax.random.split(key)
  shape = (config.num_meta_codes, model.config.code_dim)
  codes = jnp.zeros(shape)
  if config.num_meta_codes > 1:
    codes = 0.5 * jax.random.normal(code_key, shape)
  eps_z = jax.random.normal(
    eps_key,
    (num_classes, config.monte_carlo_samples, model.config.latent_dim),
  )
  trained = {"codes": codes, "logits": jnp.zeros((config.num_meta_codes,))}
  optimizer = optax.adam(config.meta_code_learning_rate)

  def loss_fn(t):
    outputs = mixture_outputs(model, phi, t["codes"], t["logits"])
    return moment_matching_loss(
      model, phi, outputs, statistics, eps_z, config.covariance_weight
    )

  def step(carry, _):
    t, opt_state = carry
    grads = jax.grad(loss_fn)(t)
    updates, opt_state = optimizer.update(grads, opt_state, t)
    t = optax.apply_updates(t, updates)
    t = {**t, "codes": project_to_ball(t["codes"], config.code_radius)}
    return (t, opt_state), None

  (trained, _), _ = jax.lax.scan(
    step, (trained, optimizer.init(trained)), None, config.meta_code_steps
  )
  return trained["codes"], jax.nn.softmax(trained["logits"])


def mixture_outputs(model, phi, codes, logits):
  """Returns `sum_k softmax(logits)_k h(codes_k)`."""
  stacked = jax.vmap(lambda code: model.hyper_outputs(phi, code))(codes)
  return hyper_cvae.mix_outputs(stacked, jax.nn.softmax(logits))


def train_linear_classifier(x, y, num_classes, config: SynthesisConfig):
  """Trains softmax regression on `x [n, d]`, `y [n]` with full-batch Adam.

  Returns:
    `{"Dense_0": {"kernel": [d, K], "bias": [K]}}`, the "params" of
    `fedjax_med.models.linear.LogisticRegression`.
  """
  params = {
    "kernel": jnp.zeros((x.shape[1], num_classes)),
    "bias": jnp.zeros((num_classes,)),
  }
  optimizer = optax.adam(config.classifier_learning_rate)

  def loss_fn(p):
    logits = x @ p["kernel"] + p["bias"]
    data = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    return data + config.classifier_l2 * jnp.sum(p["kernel"] ** 2)

  def step(carry, _):
    p, opt_state = carry
    updates, opt_state = optimizer.update(jax.grad(loss_fn)(p), opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), None

  (params, _), _ = jax.lax.scan(
    step, (params, optimizer.init(params)), None, config.classifier_steps
  )
  return {"Dense_0": params}


def synthesize(model, phi, statistics, config: SynthesisConfig, key):
  """Fits the meta-code(s), then draws a class-balanced synthetic set.

  Returns:
    `(x_hat [K * samples_per_class, d_x], labels [K * samples_per_class])`.
  """
  fit_key, sample_key = jax.random.split(key)
  codes, weights = fit_meta_codes(model, phi, statistics, config, fit_key)
  stacked = jax.vmap(lambda code: model.hyper_outputs(phi, code))(codes)
  outputs = hyper_cvae.mix_outputs(stacked, weights)
  num_classes = model.config.num_classes
  labels = jnp.repeat(jnp.arange(num_classes), config.samples_per_class)
  x_hat = hyper_cvae.sample_embeddings(
    model, phi, outputs, labels, sample_key, latent=config.latent_sampling
  )
  return x_hat, labels


def synthetic_classifier(model, phi, statistics, config: SynthesisConfig):
  """Returns the linear classifier's "params" trained on synthetic data."""
  key = jax.random.PRNGKey(config.seed)
  x_hat, labels = synthesize(model, phi, statistics, config, key)
  return train_linear_classifier(
    x_hat, labels, model.config.num_classes, config
  )
