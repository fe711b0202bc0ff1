"""FedHypeVAE: hypernetwork-generated conditional VAEs on client embeddings.

Reference: S. Gupta, N. Jangid, A. Sethi, "FedHypeVAE: Federated Learning
with Hypernetwork-Generated Conditional VAEs for Differentially-Private
Embedding Sharing", AAAI 2026 Bridge Program AIMedHealth, PMLR 317,
arXiv:2601.00785.

The data are embedding arrays `[clients, examples, d_x]` from any frozen
encoder (`FederatedData` with feature shape `[d_x]`). Client i keeps a
private encoder `psi_i` and code `v_i` (stacked in `client_states`); the
shared hypernetwork parameters `Phi` (`fedjax_med.models.hyper_cvae`)
generate its decoder and class prior. One round, for every sampled client:

  1. run `client.num_local_steps` steps on `(Phi, psi_i, v_i)` minimizing
     the per-example loss `-ELBO_i(x, y) + lambda_MMD * m(x, y)` plus the
     record-free regularizer `lambda_v ||v_i||^2 + lambda_Lip R_Lip(Phi)`,
     projecting `v_i` onto `||v_i|| <= r` after each step;
  2. send `Phi_local - Phi` and nothing else (psi_i, v_i and data stay);
  3. the server averages the deltas weighted by `n_i / sum_j n_j` and steps
     its optimizer (`sgd(server.learning_rate)`) on the negated mean.
With one local SGD step this is the paper's protocol: the client's message
is its privatized hypernetwork gradient times the local learning rate.

After training, `global_variables` fits a meta-code to DP class statistics,
draws class-balanced synthetic embeddings and returns a linear classifier
trained on them (`fedhypevae_synthesis`), which the experiment loop then
evaluates on every client's held-out test split.

Privacy (`privacy.mode="example"`): record-level DP-SGD inside each client,
with `dp_sgd`'s batch samplers, per-example clipping of the gradient over
`(Phi, psi_i, v_i)` jointly to `privacy.clip_norm` C, one Gaussian draw of
standard deviation `z C` per step with one key per leaf, and a public
denominator (the expected batch size `min(B, n_i)`). The accountant is the
experiment loop's example-level one (Poisson rate `min(1, B / n_i)`,
`num_rounds * num_local_steps` steps) composed with the one-time release
of the class statistics (noise multiplier
`privacy.statistics_noise_multiplier`). The mode "client" is rejected.

The paper's DP specification leaves these choices open; each is a field of
`FedHypeVAEConfig` and the default is stated here:

  1. Noise scale (`noise_placement`): "sum" (default) adds `N(0, (z C)^2)`
     to the sum of clipped gradients and then divides by the batch size,
     which is standard DP-SGD and what the accountant assumes. "mean" adds
     it after dividing, as printed; that is |B| times more noise than the
     accountant counts, so its epsilon is then a loose upper bound.
  2. MMD under per-example clipping: the gradient of the biased MMD^2
     decomposes exactly over real rows (`fedjax_med.losses.mmd`), because
     the synthetic rows are drawn from the prior and decoder without
     looking at data. The term `m(x, y)` compares x with synthetic rows of
     its own class, so it is clipped and noised with the ELBO. With
     `mmd_gradient="local"` (default) Phi is held fixed inside the MMD
     term, so it only updates the local code (the encoder does not enter
     it). "global" lets it reach Phi, the paper's global objective.
  3. Phi contains the base decoder weights and biases, the observation
     scale, `h_theta`, `h_omega`, the prior head `g_omega` and the label
     embedding `e(y)` (see `hyper_cvae`).
  4. The meta-code statistics are released by a separate Gaussian
     mechanism (`fedhypevae_synthesis.release_class_statistics`) whose
     privacy is composed into the reported epsilon.
  5. Synthesis samples `z ~ p_omega_o(z | y)` (`latent_sampling=
     "class_prior"`, default); "standard_normal" is the printed `N(0, I)`.
  6. The (epsilon, delta) of a run are `privacy.target_epsilon` and
     `privacy.delta`; `configs/digits_fedhypevae.py` uses (1.0, 1e-5) and
     the final metrics record the epsilon spent.
  7. Record-level DP: the unit is one embedding-label record of a client.

Departures and open choices beyond the DP specification:
  * `private_local_updates=True` (default) also updates psi_i and v_i with
    the noisy clipped gradient. The paper updates them without noise; but
    they then carry un-noised information about every record into later
    hypernetwork gradients, and DP-SGD's guarantee no longer covers the
    released updates. False gives the paper's step (and the epsilon
    reported is then not a valid bound).
  * One local optimizer (`client.optimizer`, `client.learning_rate`) steps
    `(Phi, psi_i, v_i)`, where the paper has separate rates for each.
  * `R_Lip` is the sum of squared spectral norms of the hypernetwork's
    kernels, a penalty in place of spectral normalization.
  * MMD bandwidths are `mmd_bandwidths` times `sqrt(d_x)`.
  * `train_loss` averages raw losses of the sampled rows. It is a
    diagnostic of the simulation, not a privatized release.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from optax import tree_utils as otu

from fedjax_med.algorithms import fedhypevae_synthesis as synthesis
from fedjax_med.algorithms.settings import (
  ClientConfig,
  CohortConfig,
  Schedule,
  as_schedule,
  make_client_optimizer,
  validate_client_config,
)
from fedjax_med.core import tree as tree_lib
from fedjax_med.core.algorithm import FederatedAlgorithm
from fedjax_med.core.client import ClientBatch
from fedjax_med.core.engine import ClientOutput, map_cohort
from fedjax_med.core.sampling import make_sampler
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.losses import masked_mean
from fedjax_med.losses import mmd as mmd_lib
from fedjax_med.models import hyper_cvae
from fedjax_med.privacy import clipping, dp_sgd

PyTree = Any
NOISE_PLACEMENTS = ("sum", "mean")
MMD_GRADIENTS = ("local", "global")


class FedHypeVAEConfig(NamedTuple):
  """FedHypeVAE's choices (see the module docstring for the defaults).

  Attributes:
    latent_dim: Width of z.
    hidden_size: Hidden width of the encoder and decoder.
    code_dim: d_v.
    hyper_hidden_size: Hidden width of the hypernetworks.
    mmd_weight: lambda_MMD; 0 turns the alignment term off.
    mmd_gradient: "local" or "global".
    mmd_samples: Synthetic rows per class in each step's MMD term.
    mmd_bandwidths: Kernel bandwidths in units of `sqrt(d_x)`.
    code_weight: lambda_v.
    code_radius: r.
    lipschitz_weight: lambda_Lip.
    noise_placement: "sum" or "mean".
    private_local_updates: Whether psi_i and v_i take the DP gradient.
    statistics_clip_norm: R, the clip norm of embeddings in the class
      statistics.
    statistics_noise_multiplier: sigma_s of the statistics release; used
      only under privacy.
    synthesis: Meta-code fit, synthesis and classifier settings.
  """

  latent_dim: int = 16
  hidden_size: int = 128
  code_dim: int = 8
  hyper_hidden_size: int = 64
  mmd_weight: float = 1.0
  mmd_gradient: str = "local"
  mmd_samples: int = 16
  mmd_bandwidths: Sequence[float] = (0.25, 0.5, 1.0, 2.0)
  code_weight: float = 1e-3
  code_radius: float = 5.0
  lipschitz_weight: float = 1e-4
  noise_placement: str = "sum"
  private_local_updates: bool = True
  statistics_clip_norm: float = 10.0
  statistics_noise_multiplier: float = 5.0
  synthesis: synthesis.SynthesisConfig = synthesis.SynthesisConfig()


class FedHypeVAEState(NamedTuple):
  """State of a FedHypeVAE run.

  Attributes:
    params: Phi, the shared hypernetwork parameters.
    opt_state: Server optimizer state over Phi.
    client_states: `{"encoder": psi, "code": v}`, each with a leading
      `num_clients` axis; never sent to the server.
    statistics: The released `ClassStatistics`.
    round: Rounds completed, int32 scalar.
  """

  params: PyTree
  opt_state: optax.OptState
  client_states: PyTree
  statistics: synthesis.ClassStatistics
  round: jax.Array


def validate_config(config: FedHypeVAEConfig) -> None:
  """Raises ValueError for a choice that is unknown or cannot train."""
  if config.noise_placement not in NOISE_PLACEMENTS:
    raise ValueError(
      f"noise_placement={config.noise_placement!r} is unknown; use one of "
      f"{NOISE_PLACEMENTS}."
    )
  if config.mmd_gradient not in MMD_GRADIENTS:
    raise ValueError(
      f"mmd_gradient={config.mmd_gradient!r} is unknown; use one of "
      f"{MMD_GRADIENTS}."
    )
  for field in ("mmd_weight", "code_weight", "lipschitz_weight"):
    if not getattr(config, field) >= 0:
      raise ValueError(
        f"{field}={getattr(config, field)} must be non-negative."
      )
  if not config.code_radius > 0 or not config.statistics_clip_norm > 0:
    raise ValueError(
      f"code_radius={config.code_radius} and statistics_clip_norm="
      f"{config.statistics_clip_norm} must be positive."
    )
  if config.synthesis.latent_sampling not in hyper_cvae.LATENT_SAMPLING:
    raise ValueError(
      f"latent_sampling={config.synthesis.latent_sampling!r} is unknown; "
      f"use one of {hyper_cvae.LATENT_SAMPLING}."
    )
  if config.synthesis.num_meta_codes < 1:
    raise ValueError(
      f"num_meta_codes={config.synthesis.num_meta_codes} must be at least 1."
    )


def make_model(
  config: FedHypeVAEConfig, embedding_dim: int, num_classes: int
) -> hyper_cvae.HyperCVAE:
  """Builds the conditional VAE with `config`'s sizes."""
  return hyper_cvae.hyper_cvae(
    hyper_cvae.CVAEConfig(
      embedding_dim=embedding_dim,
      num_classes=num_classes,
      latent_dim=config.latent_dim,
      hidden_size=config.hidden_size,
      code_dim=config.code_dim,
      hyper_hidden_size=config.hyper_hidden_size,
    )
  )


def privatize_gradient_sum(
  summed: PyTree,
  denominator: jax.Array,
  key: jax.Array,
  *,
  clip_norm: float,
  noise_multiplier: float,
  noise_placement: str = "sum",
) -> PyTree:
  """Turns a sum of clipped gradients into the noisy mean gradient.

  "sum" returns `(summed + N(0, (z C)^2)) / denominator`; "mean" returns
  `summed / denominator + N(0, (z C)^2)`. The noise uses one key per leaf.
  """
  stddev = noise_multiplier * clip_norm
  if noise_placement == "sum":
    noisy = clipping.add_gaussian_noise(summed, stddev, key)
    return otu.tree_scale(1.0 / denominator, noisy)
  mean = otu.tree_scale(1.0 / denominator, summed)
  return clipping.add_gaussian_noise(mean, stddev, key)


def make_local_step(
  model: hyper_cvae.HyperCVAE,
  config: FedHypeVAEConfig,
  client: ClientConfig,
):
  """Builds the gradient of one local step on `{"phi", "encoder", "code"}`.

  Returns:
    `step_gradient(trained, batch, key) -> (gradient, mean_loss)`, with
    DP-SGD under `client.dp_sgd` and the plain masked mean otherwise.
  """
  dp = client.dp_sgd
  batch_size = client.batch_size
  k = model.config.num_classes
  samples = config.mmd_samples
  bandwidths = tuple(
    b * math.sqrt(model.config.embedding_dim) for b in config.mmd_bandwidths
  )

  def example_loss_fn(eps_z, eps_x):
    def example_loss(trained, x, y, rng):
      loss = -hyper_cvae.example_elbo(
        model, trained["phi"], trained["encoder"], trained["code"], x, y, rng
      )
      if config.mmd_weight > 0:
        phi = trained["phi"]
        if config.mmd_gradient == "local":
          phi = jax.lax.stop_gradient(phi)
        outputs = model.hyper_outputs(phi, trained["code"])
        labels = jnp.full((samples,), y)
        x_hat = hyper_cvae.decode_samples(
          model, phi, outputs, labels, eps_z[y], eps_x[y], "class_prior"
        )
        mmd_term = mmd_lib.example_mmd_term(x, x_hat, bandwidths)
        loss = loss + config.mmd_weight * mmd_term
      return loss

    return example_loss

  def regularizer(trained):
    code = trained["code"]
    penalty = config.code_weight * jnp.sum(code**2)
    if config.lipschitz_weight > 0:
      penalty = penalty + config.lipschitz_weight * (
        hyper_cvae.lipschitz_penalty(trained["phi"])
      )
    return penalty

  def draw_batch(key, batch: ClientBatch):
    max_examples = batch.x.shape[0]
    if dp is not None and dp.batch_sampling == "poisson":
      return dp_sgd.poisson_batch(
        key, batch.num_examples, max_examples, batch_size, dp.poisson_capacity
      )
    return dp_sgd.fixed_size_batch(
      key, batch.num_examples, max_examples, batch_size
    )

  def step_gradient(trained, batch: ClientBatch, key):
    sample_key, noise_key, synth_key, example_key = jax.random.split(key, 4)
    z_key, x_key = jax.random.split(synth_key)
    eps_z = jax.random.normal(z_key, (k, samples, model.config.latent_dim))
    eps_x = jax.random.normal(x_key, (k, samples, model.config.embedding_dim))
    example_loss = example_loss_fn(eps_z, eps_x)
    indices, mask = draw_batch(sample_key, batch)
    x = jnp.take(batch.x, indices, axis=0)
    y = jnp.take(batch.y, indices, axis=0)
    rngs = jax.random.split(example_key, indices.shape[0])

    def mean_loss(t):
      losses = jax.vmap(example_loss, in_axes=(None, 0, 0, 0))(t, x, y, rngs)
      count = jnp.maximum(jnp.sum(mask), 1)
      return jnp.sum(jnp.where(mask, losses, 0.0)) / count, losses

    if dp is None:
      gradient, losses = jax.grad(mean_loss, has_aux=True)(trained)
    else:
      summed, losses, _ = dp_sgd.clipped_gradient_sum(
        example_loss, trained, x, y, mask, rngs, dp.clip_norm
      )
      denominator = dp_sgd.expected_batch_size(batch.num_examples, batch_size)
      gradient = privatize_gradient_sum(
        summed,
        denominator,
        noise_key,
        clip_norm=dp.clip_norm,
        noise_multiplier=dp.noise_multiplier,
        noise_placement=config.noise_placement,
      )
      if not config.private_local_updates:
        exact, _ = jax.grad(mean_loss, has_aux=True)(trained)
        gradient = {
          **gradient,
          "encoder": exact["encoder"],
          "code": exact["code"],
        }
    gradient = otu.tree_add(gradient, jax.grad(regularizer)(trained))
    return gradient, masked_mean(losses, mask)

  return step_gradient


def make_client_update(model, config: FedHypeVAEConfig, client: ClientConfig):
  """Builds local training: `(phi, psi, code, batch, key, lr) -> result`.

  Returns:
    `client_update(...) -> (phi, psi, code, mean_loss)` after
    `client.num_local_steps` steps.
  """
  step_gradient = make_local_step(model, config, client)

  def client_update(phi, psi, code, batch, key, learning_rate):
    optimizer = make_client_optimizer(client, learning_rate)
    trained = {"phi": phi, "encoder": psi, "code": code}

    def step(carry, step_key):
      trained, opt_state = carry
      gradient, loss = step_gradient(trained, batch, step_key)
      updates, opt_state = optimizer.update(gradient, opt_state, trained)
      trained = optax.apply_updates(trained, updates)
      code = synthesis.project_to_ball(trained["code"], config.code_radius)
      return ({**trained, "code": code}, opt_state), loss

    keys = jax.random.split(key, client.num_local_steps)
    (trained, _), losses = jax.lax.scan(
      step, (trained, optimizer.init(trained)), keys
    )
    return trained["phi"], trained["encoder"], trained["code"], losses[-1]

  return client_update


def fedhypevae(
  data: FederatedData,
  *,
  config: FedHypeVAEConfig | None = None,
  client: ClientConfig,
  cohort: CohortConfig,
  server_learning_rate: float | Schedule = 1.0,
  dataset_name: str = "the dataset",
) -> FederatedAlgorithm:
  """FedHypeVAE on `data`'s embeddings `[clients, examples, d_x]`.

  `data` is needed at build time for the class statistics released in
  `init`. `init`'s variables are those of the downstream linear classifier
  and are ignored; `global_variables` returns that classifier trained on
  synthetic embeddings, as `{"params": {"Dense_0": ...}}`.
  """
  config = config or FedHypeVAEConfig()
  validate_config(config)
  validate_client_config(client)
  if len(data.feature_shape) != 1:
    raise ValueError(
      f"FedHypeVAE models embedding vectors, but {dataset_name} has "
      f"feature shape {data.feature_shape}; embed it first (e.g. the "
      "'digits_embeddings' dataset)."
    )
  num_clients = data.num_clients
  model = make_model(config, data.feature_shape[0], data.num_classes)
  client_update = make_client_update(model, config, client)
  server_optimizer = optax.sgd(
    as_schedule(server_learning_rate, "server learning_rate")
  )
  client_schedule = as_schedule(client.learning_rate, "client learning_rate")
  sampler = make_sampler(
    cohort.sampling,
    num_clients,
    cohort.clients_per_round,
    cohort.poisson_rate,
    dataset_name,
  )
  statistics_noise = 0.0
  if client.dp_sgd is not None:
    statistics_noise = config.statistics_noise_multiplier
  train_x = jnp.asarray(data.train.x)
  train_y = jnp.asarray(data.train.y)
  train_n = jnp.asarray(data.train.num_examples)

  def init(rng, variables):
    del variables  # The classifier is trained after synthesis.
    phi_key, encoder_key, code_key, statistics_key = jax.random.split(rng, 4)
    phi = model.init_phi(phi_key)
    encoders = jax.vmap(model.init_encoder)(
      jax.random.split(encoder_key, num_clients)
    )
    codes = 0.1 * jax.random.normal(code_key, (num_clients, config.code_dim))
    statistics = synthesis.release_class_statistics(
      train_x,
      train_y,
      train_n,
      data.num_classes,
      clip_norm=config.statistics_clip_norm,
      noise_multiplier=statistics_noise,
      key=statistics_key,
    )
    return FedHypeVAEState(
      params=phi,
      opt_state=server_optimizer.init(phi),
      client_states={"encoder": encoders, "code": codes},
      statistics=statistics,
      round=jnp.zeros((), jnp.int32),
    )

  def client_message(state, data, clients_key, learning_rate, client_id):
    """Runs one client; `summed` is all that reaches the server."""
    batch = ClientBatch(
      x=data.train.x[client_id],
      y=data.train.y[client_id],
      num_examples=data.train.num_examples[client_id],
    )
    own = tree_lib.gather_rows(state.client_states, client_id)
    phi, psi, code, loss = client_update(
      state.params,
      own["encoder"],
      own["code"],
      batch,
      jax.random.fold_in(clients_key, client_id),
      learning_rate,
    )
    weight = batch.num_examples.astype(jnp.float32)
    summed = {
      "weighted_delta": otu.tree_scale(weight, otu.tree_sub(phi, state.params)),
      "weight": weight,
      "weighted_loss": weight * loss,
    }
    return ClientOutput(summed, {"encoder": psi, "code": code})

  def run_round(state: FedHypeVAEState, data: FederatedData, rng):
    data = jax.tree.map(jnp.asarray, data)
    sample_key, clients_key = jax.random.split(rng)
    cohort_sample = sampler(sample_key)
    learning_rate = client_schedule(state.round)
    summed, per_client = map_cohort(
      lambda cid: client_message(state, data, clients_key, learning_rate, cid),
      cohort_sample,
      cohort.clients_per_chunk,
    )

    total = summed["weight"]
    has_data = total > 0
    inverse = jnp.where(has_data, 1.0 / jnp.maximum(total, 1e-12), 0.0)
    mean_delta = otu.tree_scale(inverse, summed["weighted_delta"])
    updates, opt_state = server_optimizer.update(
      otu.tree_scale(-1.0, mean_delta), state.opt_state, state.params
    )
    params = optax.apply_updates(state.params, updates)
    params = otu.tree_where(has_data, params, state.params)
    opt_state = otu.tree_where(has_data, opt_state, state.opt_state)
    client_states = tree_lib.scatter_rows(
      state.client_states,
      cohort_sample.client_ids,
      per_client,
      cohort_sample.mask,
    )
    new_state = state._replace(
      params=params,
      opt_state=opt_state,
      client_states=client_states,
      round=state.round + 1,
    )
    metrics = {
      "train_loss": summed["weighted_loss"] * inverse,
      "cohort_size": jnp.sum(cohort_sample.mask.astype(jnp.int32)),
      "client_learning_rate": learning_rate,
      "delta_norm": otu.tree_norm(mean_delta),
    }
    return new_state, metrics

  classifier = jax.jit(
    lambda phi, statistics: synthesis.synthetic_classifier(
      model, phi, statistics, config.synthesis
    )
  )

  def global_variables(state: FedHypeVAEState):
    return {"params": classifier(state.params, state.statistics)}

  algorithm = FederatedAlgorithm(init, run_round, global_variables)
  return FedHypeVAEAlgorithm(algorithm, model, client_message)


class FedHypeVAEAlgorithm(NamedTuple):
  """The algorithm's contract plus pieces that tests and scripts inspect.

  Attributes:
    algorithm: The `FederatedAlgorithm`.
    model: The conditional VAE.
    client_message: `(state, data, clients_key, learning_rate, client_id)
      -> ClientOutput`; `summed` is what the server receives.
  """

  algorithm: FederatedAlgorithm
  model: hyper_cvae.HyperCVAE
  client_message: Any


def fedhypevae_config(config: ml_collections.ConfigDict) -> FedHypeVAEConfig:
  """Reads FedHypeVAE's settings from `config.algorithm` and `privacy`."""
  defaults = FedHypeVAEConfig()
  section = config.algorithm
  values = {}
  for field in FedHypeVAEConfig._fields:
    if field == "synthesis" or field not in section:
      continue
    default = getattr(defaults, field)
    value = section[field]
    values[field] = tuple(value) if isinstance(default, tuple) else value
  privacy = config.get("privacy", None)
  if privacy is not None and "statistics_noise_multiplier" in privacy:
    values["statistics_noise_multiplier"] = float(
      privacy.statistics_noise_multiplier
    )
  synthesis_values = {}
  options = section.get("synthesis", None)
  if options is not None:
    for field in synthesis.SynthesisConfig._fields:
      if field in options:
        synthesis_values[field] = options[field]
  synthesis_values.setdefault("seed", int(config.get("seed", 0)))
  values["synthesis"] = synthesis.SynthesisConfig(**synthesis_values)
  return FedHypeVAEConfig(**values)


def from_config(
  config: ml_collections.ConfigDict,
  model,
  data: FederatedData,
  *,
  client: ClientConfig,
  cohort: CohortConfig,
  server_learning_rate: float | Schedule,
  aggregator,
  dataset_name: str,
) -> FederatedAlgorithm:
  """Builds FedHypeVAE from `config.algorithm` (fields of the config).

  `config.model` must be the downstream classifier, "logistic_regression".
  `privacy.mode` may be "none" or "example".
  """
  del model  # The classifier's params come from `global_variables`.
  privacy = config.get("privacy", None)
  mode = "none" if privacy is None else privacy.get("mode", "none")
  if mode == "client" or aggregator is not None:
    raise ValueError(
      f"privacy.mode={mode!r} (or secure aggregation) is not supported by "
      "algorithm.name='fedhypevae', whose guarantee is record-level DP-SGD "
      "inside each client; use privacy.mode='example' or 'none'."
    )
  if mode == "example":
    # The accountant reads the same field, so an absent one would leave
    # the statistics release out of epsilon.
    statistics_noise = privacy.get("statistics_noise_multiplier", 0.0)
    if not statistics_noise > 0:
      raise ValueError(
        f"privacy.statistics_noise_multiplier={statistics_noise} must be "
        "positive under privacy.mode='example': it is the noise of the "
        "class statistics the meta-code is fitted to, and the accountant "
        "composes it into epsilon. Pass e.g. "
        "--config.privacy.statistics_noise_multiplier=5.0."
      )
  return fedhypevae(
    data,
    config=fedhypevae_config(config),
    client=client,
    cohort=cohort,
    server_learning_rate=server_learning_rate,
    dataset_name=dataset_name,
  ).algorithm
