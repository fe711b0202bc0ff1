"""Hypernetwork-generated conditional VAE on embeddings (FedHypeVAE's model).

Reference: S. Gupta, N. Jangid, A. Sethi, "FedHypeVAE: Federated Learning
with Hypernetwork-Generated Conditional VAEs for Differentially-Private
Embedding Sharing", AAAI 2026 Bridge Program AIMedHealth, PMLR 317,
arXiv:2601.00785.

Client i owns a private encoder `q_psi_i(z | x, y)` and a private code
`v_i [d_v]`. Everything else is shared, the hypernetwork parameters `Phi`:

  * "decoder": base weights `W_l, b_l` of the three-layer decoder
    `[z, onehot(y)] -> hidden -> hidden -> d_x` and a per-dimension
    observation log scale;
  * "hyper_decoder": the MLP `h_theta(v)` that outputs, per decoder layer,
    the row scales `d_l(v)` and bias shifts `Delta b_l(v)`, so that
    `W_l(v) = diag(d_l(v)) W_l` and `b_l(v) = b_l + Delta b_l(v)`;
  * "hyper_prior": the MLP `h_omega(v)` that outputs a prior code `c`;
  * "prior_head" and "label_embedding": `g_omega(c, e(y))`, which outputs
    the class prior `(mu_{i,y}, log sigma_{i,y})`, and the table `e(y)`.

The paper leaves open which parameters live in Phi. This module puts the
base decoder, the prior head and the label embedding there, because every
client's generator needs that class-level structure.

Conventions: kernels are `[in, out]` (flax), so `diag(d) W` with `W` of
shape `[out, in]` is `kernel * d[None, :]`. The row scales are `1 + raw`,
with the hypernetwork's output layer initialized near zero, so every code
starts from the base decoder. The likelihood is a diagonal Gaussian with the
shared learned scale, so synthesis `x^ ~ p_theta(x | z, y)` adds that noise.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
LOG_2PI = float(np.log(2.0 * np.pi))


class CVAEConfig(NamedTuple):
  """Sizes of the conditional VAE and its hypernetwork.

  Attributes:
    embedding_dim: d_x, the width of the embeddings modelled.
    num_classes: Label classes.
    latent_dim: Width of z.
    hidden_size: Width of the encoder's and decoder's hidden layers.
    code_dim: d_v, the width of a client code.
    hyper_hidden_size: Hidden width of `h_theta` and `h_omega`.
    prior_code_dim: Width of `h_omega(v)`.
    label_embedding_dim: Width of `e(y)`.
    hyper_output_scale: Standard deviation of the hypernetworks' output
      kernels at init.
  """

  embedding_dim: int
  num_classes: int
  latent_dim: int = 16
  hidden_size: int = 128
  code_dim: int = 8
  hyper_hidden_size: int = 64
  prior_code_dim: int = 16
  label_embedding_dim: int = 16
  hyper_output_scale: float = 0.01


class HyperOutputs(NamedTuple):
  """Generated outputs of one code, or of a mixture of codes.

  Attributes:
    row_scales: One `[r_l]` array per decoder layer, `d_l(v)`.
    bias_shifts: One `[r_l]` array per decoder layer, `Delta b_l(v)`.
    prior_code: `h_omega(v)`, shape `[prior_code_dim]`.
  """

  row_scales: tuple[jax.Array, ...]
  bias_shifts: tuple[jax.Array, ...]
  prior_code: jax.Array


class _MLP(nn.Module):
  hidden_sizes: tuple[int, ...]
  num_outputs: int
  output_scale: float | None = None

  @nn.compact
  def __call__(self, x):
    for size in self.hidden_sizes:
      x = nn.relu(nn.Dense(size)(x))
    kernel_init = nn.initializers.lecun_normal()
    if self.output_scale is not None:
      kernel_init = nn.initializers.normal(self.output_scale)
    return nn.Dense(self.num_outputs, kernel_init=kernel_init)(x)


def decoder_layer_sizes(config: CVAEConfig) -> tuple[tuple[int, int], ...]:
  """Returns `(in, out)` of each decoder layer."""
  first = config.latent_dim + config.num_classes
  h = config.hidden_size
  return ((first, h), (h, h), (h, config.embedding_dim))


class HyperCVAE(NamedTuple):
  """The model as pure functions (see the module docstring).

  Attributes:
    config: Sizes.
    init_phi: `rng -> Phi`.
    init_encoder: `rng -> psi`, one client's encoder parameters.
    encode: `(psi, x [d_x], y []) -> (mu [d_z], log_var [d_z])`.
    hyper_outputs: `(Phi, v [d_v]) -> HyperOutputs`.
    decoder_weights: `(Phi, HyperOutputs) -> ((kernel, bias), ...)`.
    decode_mean: `(Phi, HyperOutputs, z [d_z], y []) -> x mean [d_x]`.
    prior: `(Phi, HyperOutputs, y []) -> (mu [d_z], log_sigma [d_z])`.
  """

  config: CVAEConfig
  init_phi: Any
  init_encoder: Any
  encode: Any
  hyper_outputs: Any
  decoder_weights: Any
  decode_mean: Any
  prior: Any


def hyper_cvae(config: CVAEConfig) -> HyperCVAE:
  """Builds the hypernetwork-generated conditional VAE for `config`.

  Raises:
    ValueError: For a non-positive size.
  """
  for field in CVAEConfig._fields[:-1]:
    if getattr(config, field) < 1:
      raise ValueError(
        f"CVAEConfig.{field}={getattr(config, field)} must be a positive size."
      )
  k, d_z = config.num_classes, config.latent_dim
  layers = decoder_layer_sizes(config)
  rows = [out for _, out in layers]
  encoder = _MLP((config.hidden_size, config.hidden_size), 2 * d_z)
  hyper_decoder = _MLP(
    (config.hyper_hidden_size,), 2 * sum(rows), config.hyper_output_scale
  )
  hyper_prior = _MLP(
    (config.hyper_hidden_size,),
    config.prior_code_dim,
    config.hyper_output_scale,
  )
  prior_head = _MLP((config.hidden_size,), 2 * d_z)

  def init_phi(rng):
    keys = jax.random.split(rng, 5)
    code = jnp.zeros((config.code_dim,))
    decoder = {}
    for index, ((fan_in, fan_out), key) in enumerate(
      zip(layers, jax.random.split(keys[0], len(layers)), strict=True)
    ):
      kernel = nn.initializers.lecun_normal()(key, (fan_in, fan_out))
      decoder[f"layer_{index}"] = {
        "kernel": kernel,
        "bias": jnp.zeros((fan_out,)),
      }
    decoder["log_scale"] = jnp.zeros((config.embedding_dim,))
    head_input = jnp.zeros(
      (config.prior_code_dim + config.label_embedding_dim,)
    )
    return {
      "decoder": decoder,
      "hyper_decoder": hyper_decoder.init(keys[1], code)["params"],
      "hyper_prior": hyper_prior.init(keys[2], code)["params"],
      "prior_head": prior_head.init(keys[3], head_input)["params"],
      "label_embedding": jax.random.normal(
        keys[4], (k, config.label_embedding_dim)
      ),
    }

  def conditioned(a, y):
    return jnp.concatenate([a, jax.nn.one_hot(y, k, dtype=a.dtype)])

  def init_encoder(rng):
    sample = jnp.zeros((config.embedding_dim + k,))
    return encoder.init(rng, sample)["params"]

  def encode(psi, x, y):
    out = encoder.apply({"params": psi}, conditioned(x, y))
    return out[:d_z], out[d_z:]

  def hyper_outputs(phi, code):
    flat = hyper_decoder.apply({"params": phi["hyper_decoder"]}, code)
    raw_scales, shifts = jnp.split(flat, 2)
    bounds = np.cumsum(rows)[:-1].tolist()
    scales = tuple(1.0 + s for s in jnp.split(raw_scales, bounds))
    shifts = tuple(jnp.split(shifts, bounds))
    prior_code = hyper_prior.apply({"params": phi["hyper_prior"]}, code)
    return HyperOutputs(scales, shifts, prior_code)

  def decoder_weights(phi, outputs: HyperOutputs):
    weights = []
    for index in range(len(layers)):
      base = phi["decoder"][f"layer_{index}"]
      scale = outputs.row_scales[index]
      kernel = base["kernel"] * scale[None, :]
      weights.append((kernel, base["bias"] + outputs.bias_shifts[index]))
    return tuple(weights)

  def decode_mean(phi, outputs, z, y):
    a = conditioned(z, y)
    weights = decoder_weights(phi, outputs)
    for index, (kernel, bias) in enumerate(weights):
      a = a @ kernel + bias
      if index < len(weights) - 1:
        a = nn.relu(a)
    return a

  def prior(phi, outputs, y):
    label = phi["label_embedding"][y]
    head_input = jnp.concatenate([outputs.prior_code, label])
    out = prior_head.apply({"params": phi["prior_head"]}, head_input)
    return out[:d_z], out[d_z:]

  return HyperCVAE(
    config=config,
    init_phi=init_phi,
    init_encoder=init_encoder,
    encode=encode,
    hyper_outputs=hyper_outputs,
    decoder_weights=decoder_weights,
    decode_mean=decode_mean,
    prior=prior,
  )


def mix_outputs(outputs: HyperOutputs, weights: jax.Array) -> HyperOutputs:
  """Mixes a stacked `HyperOutputs` (leading axis K) with simplex weights.

  This is the paper's mixture of meta-codes, `theta_mix = sum_k pi_k
  h_theta(v_k)` and the same for omega, applied to the generated outputs.
  """
  return jax.tree.map(lambda leaf: jnp.tensordot(weights, leaf, 1), outputs)


def kl_diagonal_gaussians(mu_q, log_var_q, mu_p, log_sigma_p) -> jax.Array:
  """Returns `KL(N(mu_q, exp(log_var_q)) || N(mu_p, exp(2 log_sigma_p)))`.

  Both Gaussians are diagonal; the result sums over the last axis.
  """
  var_q = jnp.exp(log_var_q)
  var_p = jnp.exp(2.0 * log_sigma_p)
  terms = (
    log_sigma_p
    - 0.5 * log_var_q
    + (var_q + (mu_q - mu_p) ** 2) / (2.0 * var_p)
    - 0.5
  )
  return jnp.sum(terms, axis=-1)


def gaussian_log_likelihood(x, mean, log_scale) -> jax.Array:
  """Returns `log N(x; mean, diag(exp(2 log_scale)))`, summed over features."""
  z = (x - mean) * jnp.exp(-log_scale)
  return jnp.sum(-0.5 * z**2 - log_scale - 0.5 * LOG_2PI, axis=-1)


def example_elbo(model: HyperCVAE, phi, psi, code, x, y, rng) -> jax.Array:
  """Returns one example's ELBO with one reparameterized sample of z.

  `ELBO = log p_theta(x | z, y) - KL(q_psi(z | x, y) || p_omega(z | y))`,
  the KL term in closed form.
  """
  mu_q, log_var_q = model.encode(psi, x, y)
  eps = jax.random.normal(rng, mu_q.shape, mu_q.dtype)
  z = mu_q + jnp.exp(0.5 * log_var_q) * eps
  outputs = model.hyper_outputs(phi, code)
  mean = model.decode_mean(phi, outputs, z, y)
  log_likelihood = gaussian_log_likelihood(x, mean, phi["decoder"]["log_scale"])
  mu_p, log_sigma_p = model.prior(phi, outputs, y)
  return log_likelihood - kl_diagonal_gaussians(
    mu_q, log_var_q, mu_p, log_sigma_p
  )


def sample_embeddings(
  model: HyperCVAE,
  phi,
  outputs: HyperOutputs,
  labels: jax.Array,
  key: jax.Array,
  *,
  latent: str = "class_prior",
) -> jax.Array:
  """Draws `x^ ~ p_theta(x | z, y)` for every label in `labels [n]`.

  Args:
    model: The CVAE.
    phi: Shared parameters.
    outputs: Generated outputs of the code (or mixture) to synthesize with.
    labels: Int labels `[n]`.
    key: PRNG key.
    latent: "class_prior" samples `z ~ p_omega(z | y)`; "standard_normal"
      samples `z ~ N(0, I)` as the paper's synthesis equation prints.

  Returns:
    Synthetic embeddings `[n, d_x]`.
  """
  if latent not in LATENT_SAMPLING:
    raise ValueError(
      f"latent={latent!r} is unknown; use one of {LATENT_SAMPLING}."
    )
  n = labels.shape[0]
  z_key, x_key = jax.random.split(key)
  eps_z = jax.random.normal(z_key, (n, model.config.latent_dim))
  eps_x = jax.random.normal(x_key, (n, model.config.embedding_dim))
  return decode_samples(model, phi, outputs, labels, eps_z, eps_x, latent)


LATENT_SAMPLING = ("class_prior", "standard_normal")


def decode_samples(model, phi, outputs, labels, eps_z, eps_x, latent):
  """Maps standard normal draws to synthetic embeddings (reparameterized)."""

  def one(y, e_z, e_x):
    if latent == "class_prior":
      mu, log_sigma = model.prior(phi, outputs, y)
      z = mu + jnp.exp(log_sigma) * e_z
    else:
      z = e_z
    mean = model.decode_mean(phi, outputs, z, y)
    return mean + jnp.exp(phi["decoder"]["log_scale"]) * e_x

  return jax.vmap(one)(labels, eps_z, eps_x)


def spectral_norm(kernel: jax.Array, num_iterations: int = 10) -> jax.Array:
  """Estimates the largest singular value of `kernel` by power iteration.

  The singular vectors are held fixed in the gradient, as in spectral
  normalization (Miyato et al., ICLR 2018), so the gradient is `u v^T`.
  """
  v = jnp.ones((kernel.shape[1],), kernel.dtype) / math.sqrt(kernel.shape[1])
  w = jax.lax.stop_gradient(kernel)
  for _ in range(num_iterations):
    u = w @ v
    u = u / jnp.maximum(jnp.linalg.norm(u), 1e-12)
    v = w.T @ u
    v = v / jnp.maximum(jnp.linalg.norm(v), 1e-12)
  return u @ kernel @ v


def lipschitz_penalty(phi) -> jax.Array:
  """Returns the sum of squared spectral norms of the hypernetworks' kernels.

  The product of the layers' spectral norms bounds the Lipschitz constant of
  a ReLU MLP, so this penalty replaces the paper's `R_Lip`. The norms
  come from power iteration: `jnp.linalg.norm(ord=2)`, an SVD, stalled the
  compiled round on XLA:CPU (jax 0.10.2) under vmap over examples.
  """
  total = jnp.zeros(())
  for name in ("hyper_decoder", "hyper_prior"):
    for layer in phi[name].values():
      total = total + spectral_norm(layer["kernel"]) ** 2
  return total
