"""FedAlign: cross-client style mixing with dual-stage alignment.

Reference: S. Gupta, V. Sutar, V. Singh, A. Sethi, "FedAlign: Federated
Domain Generalization with Cross-Client Feature Alignment", CVPR 2025
Workshops (FedVision), arXiv:2501.15486. Only the abstract was available, so
the losses follow the released code (github.com/sunnyinAI/FedALign, a fork
of FedCCRL: R. Wang, Y. Tang, arXiv:2410.11267,
github.com/SanphouWang/FedCCRL). This module is a reconstruction of that
code on the FedAvg round, with the departures listed below.

Every round, before local training, each client takes a random
`style_fraction` of its training rows and computes their style statistics.
For images `[height, width, channels]` these are each image's mean and
standard deviation per channel over height and width, with `std =
sqrt(var + 1e-6)`. The pool of all clients' statistics is built inside the
compiled round. Each local step on a batch `(x, y)` then forms two styled
views, `x1 = MixStyle(x)` and `x2 = MixStyle(x1)`, each with freshly drawn
target statistics and mixing weights, and minimizes

  L = CE(x) + CE(x1) + CE(x2)
      + consistency_weight * (MSE(h1, h) + MSE(h2, h)) / 2
      + js_weight * JS(P, P1, P2)
      + supcon_weight * (SupCon(h1, h) + SupCon(h2, h)) / 2,

where `h` is the representation the model's head reads
(`Model.apply_features`), `P` the class probabilities and `CE` the
configured client loss. The weights are the code's `lambda3`, `lambda2` and
`lambda1`. The server is FedAvg.

MixStyle (Zhou, Yang, Qiao, Xiang, ICLR 2021, arXiv:2104.02008) at the
input: with the row's own statistics `(mu, sigma)`, target `(mu2, sigma2)`
and `lam ~ Beta(mix_alpha, mix_alpha)` per row,
`out = (x - mu) / sigma * (lam sigma + (1 - lam) sigma2) + lam mu
+ (1 - lam) mu2`. It is applied to a whole batch with probability
`mix_probability`, as in MixStyle's code.

The Jensen-Shannon term is `(1/3) sum_Q KL(Q || M)` over `Q in {P, P1, P2}`
with `M = clip((P + P1 + P2) / 3, 1e-7, 1)`, averaged over the batch.
SupCon follows the released code: rows of `Z = [h_aug; h]` are
L2-normalized, `S = Z Z^T / temperature`, and anchor `i` scores
`-mean_{j: y_j = y_i} S_ij + log sum_{j != i} exp(S_ij)`. The positives
include `j = i`, which differs from supervised contrastive learning (Khosla
et al., NeurIPS 2020, arXiv:2004.11362), and `standard_supcon=True`
excludes it. An anchor without positives is left out of the mean.

Choices:
  * `style_source="cross_client"` (default) mixes each row with statistics
    drawn uniformly from the other clients' pool entries, as the paper's
    abstract describes and FedCCRL's original code did. `"in_batch"`
    matches FedAlign's released code, which overwrites the sampled
    statistics with those of another row of the same batch. The partner
    comes from a random cyclic order of the real rows, so no row takes its
    own statistics when the batch has two or more.
  * The released code's KMeans sampler (7 clusters, draws weighted by each
    entry's variance) is not implemented, and draws are uniform over the
    other clients' entries. In the released code the sampled statistics are
    overwritten by the in-batch ones, so the sampler has no effect there,
    and KMeans from scikit-learn cannot run inside the compiled round.
  * The released code scales `lam` by `sigmoid(15 d)` with `d = 1 -
    max_c softmax_c(mean_{HW} x_n)`. Because `x_n` has zero mean per
    channel, this factor is `sigmoid(15 (1 - 1/C))`: 0.99995 for RGB and
    0.5 for one channel, an artefact of the softmax over one value. It is
    left out, so `lam ~ Beta(mix_alpha, mix_alpha)` as in MixStyle.
  * AugMix is left out. The released code applies torchvision's AugMix
    (PIL operations on 8-bit RGB images) after MixStyle. No JAX version
    exists here, and its operations do not carry over to 8x8 grey digits
    or to tabular rows. Both views differ from `x` by MixStyle only.
  * The domain discriminator is left out: the released code trains it on
    detached features and never adds its loss to `L`, so it does not change
    the model.
  * The pool is rebuilt every round from every client's training split,
    which assumes full participation as in FedAlign's setup. Under partial
    participation it still contains statistics of clients outside the
    cohort. Its random rows come from `fold_in(round_key, 0x5A11)`.
  * Tabular rows `[features]` have no spatial axes, so the analogue is
    per-site: a client's pool entry is the per-feature mean and standard
    deviation of its sampled rows (at least 2), a row's own statistics are
    its batch's per-feature mean and standard deviation over the real rows,
    and MixStyle re-standardizes the row to another site's statistics.
    `"in_batch"` has no tabular analogue and raises.
  * The three views go through the model as one batch of `3 * batch_size`
    rows, so a model with batch normalization normalizes and updates its
    statistics over all three together.
  * Defaults are the released code's: `style_fraction=0.1`,
    `mix_alpha=0.1`, `mix_probability=1`, all three weights 0.1 and
    `temperature=0.1`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from fedjax_med import losses
from fedjax_med.algorithms.fedalign_style import (
  StylePool,
  build_style_pool,
  in_batch_partners,
  instance_statistics,
  masked_feature_statistics,
  mix_style,
  pool_entries,
  sample_style_indices,
)
from fedjax_med.algorithms.fedavg import (
  ClientConfig,
  ClientContext,
  ClientHooks,
  CohortConfig,
  Schedule,
  ServerState,
  as_schedule,
  build_fedavg_family,
)
from fedjax_med.core.aggregation import Aggregator
from fedjax_med.core.algorithm import FederatedAlgorithm
from fedjax_med.core.client import Objective
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.losses import alignment
from fedjax_med.models.base import Model

STYLE_SOURCES = ("cross_client", "in_batch")
# Stream of the pool's row draws, folded into the round key. The FedAvg round
# uses split(round_key) and fold_in(round_key, 2).
_POOL_STREAM = 0x5A11


class FedAlignConfig(NamedTuple):
  """FedAlign's settings (defaults from the released code).

  Attributes:
    style_source: "cross_client" or "in_batch" (see the module docstring).
    style_fraction: Share of each client's training rows in the pool, in
      (0, 1].
    mix_alpha: Beta parameter of MixStyle's mixing weight, > 0.
    mix_probability: Probability that MixStyle is applied to a batch.
    supcon_weight: Weight of the supervised contrastive term (`lambda1`).
    js_weight: Weight of the Jensen-Shannon term (`lambda2`).
    consistency_weight: Weight of the representation MSE (`lambda3`).
    temperature: SupCon temperature, > 0.
    standard_supcon: Excludes an anchor from its own positives.
  """

  style_source: str = "cross_client"
  style_fraction: float = 0.1
  mix_alpha: float = 0.1
  mix_probability: float = 1.0
  supcon_weight: float = 0.1
  js_weight: float = 0.1
  consistency_weight: float = 0.1
  temperature: float = 0.1
  standard_supcon: bool = False


def make_augment(config: FedAlignConfig, image: bool):
  """Builds `augment(x, mask, key, pool, client_id) -> MixStyle(x)`."""

  def augment(x, mask, key, pool: StylePool, client_id):
    lam_key, style_key, apply_key = jax.random.split(key, 3)
    size = x.shape[0]
    lam = jax.random.beta(lam_key, config.mix_alpha, config.mix_alpha, (size,))
    if image:
      mean, std = instance_statistics(x)
    else:
      mean, std = masked_feature_statistics(x, mask)
      mean = jnp.broadcast_to(mean, (size, mean.shape[0]))
      std = jnp.broadcast_to(std, (size, std.shape[0]))

    if config.style_source == "in_batch":
      partners = in_batch_partners(style_key, mask)
      target_mean, target_std = mean[partners], std[partners]
    else:
      indices, found = sample_style_indices(
        style_key, pool.valid, client_id, size
      )
      channels = pool.mean.shape[-1]
      target_mean = pool.mean.reshape(-1, channels)[indices]
      target_std = pool.std.reshape(-1, channels)[indices]
      target_mean = jnp.where(found, target_mean, mean)
      target_std = jnp.where(found, target_std, std)

    # Statistics are [batch, channels]: expand them over height and width.
    expand = (slice(None), None, None) if image else (slice(None),)
    mixed = mix_style(
      x,
      mean[expand],
      std[expand],
      target_mean[expand],
      target_std[expand],
      lam[(*expand, None)],
    )
    mixed = jax.lax.stop_gradient(mixed)
    apply = jax.random.uniform(apply_key) < config.mix_probability
    return jnp.where(apply, mixed, x)

  return augment


def make_objective(model: Model, config: FedAlignConfig, loss_fn, image: bool):
  """Builds `(pool, client_id) -> Objective`, FedAlign's local step loss.

  The objective's data loss is the client loss on the original batch. A
  term whose weight is 0 is not computed.
  """
  augment = make_augment(config, image)

  def for_client(pool: StylePool, client_id) -> Objective:
    def objective(params, model_state, x, y, mask, rng):
      model_key, first_key, second_key = jax.random.split(rng, 3)
      x1 = augment(x, mask, first_key, pool, client_id)
      x2 = augment(x1, mask, second_key, pool, client_id)
      logits, features, new_state = model.apply_features(
        {"params": params, **model_state},
        jnp.concatenate([x, x1, x2]),
        train=True,
        rng=model_key,
      )
      logits = jnp.split(logits, 3)
      h, h1, h2 = jnp.split(features, 3)

      view_losses = [losses.masked_mean(loss_fn(o, y), mask) for o in logits]
      data_loss = view_losses[0]
      total = view_losses[0] + view_losses[1] + view_losses[2]
      if config.consistency_weight > 0:
        consistency = alignment.representation_mse(
          h1, h, mask
        ) + alignment.representation_mse(h2, h, mask)
        total = total + config.consistency_weight * 0.5 * consistency
      if config.js_weight > 0:
        divergence = alignment.jensen_shannon(
          [losses.probabilities(o) for o in logits], mask
        )
        total = total + config.js_weight * divergence
      if config.supcon_weight > 0:
        contrast = sum(
          alignment.supervised_contrastive(
            view,
            h,
            y,
            mask,
            config.temperature,
            standard=config.standard_supcon,
          )
          for view in (h1, h2)
        )
        total = total + config.supcon_weight * 0.5 * contrast
      return total, (data_loss, new_state)

    return objective

  return for_client


def validate_config(
  config: FedAlignConfig, feature_shape: tuple[int, ...]
) -> None:
  """Raises ValueError for settings FedAlign cannot use on this data."""
  if config.style_source not in STYLE_SOURCES:
    raise ValueError(
      f"fedalign style_source={config.style_source!r} is unknown; use one "
      f"of {STYLE_SOURCES}."
    )
  if not 0.0 < config.style_fraction <= 1.0:
    raise ValueError(
      f"fedalign style_fraction={config.style_fraction} must lie in (0, 1]; "
      "the released code uses 0.1."
    )
  if not config.mix_alpha > 0:
    raise ValueError(
      f"fedalign mix_alpha={config.mix_alpha} must be positive, e.g. 0.1."
    )
  if not 0.0 <= config.mix_probability <= 1.0:
    raise ValueError(
      f"fedalign mix_probability={config.mix_probability} must lie in "
      "[0, 1]; 1 styles every batch."
    )
  for name in ("supcon_weight", "js_weight", "consistency_weight"):
    value = getattr(config, name)
    if not value >= 0:
      raise ValueError(
        f"fedalign {name}={value} must be >= 0; 0 turns the term off."
      )
  if not config.temperature > 0:
    raise ValueError(
      f"fedalign temperature={config.temperature} must be positive, e.g. 0.1."
    )
  if len(feature_shape) not in (1, 3):
    raise ValueError(
      f"fedalign needs images [height, width, channels] or tabular rows "
      f"[features], got feature shape {feature_shape}."
    )
  if len(feature_shape) == 1 and config.style_source == "in_batch":
    raise ValueError(
      "fedalign style_source='in_batch' swaps per-image statistics within "
      "a batch, and tabular rows have none; use style_source="
      "'cross_client'."
    )


def fedalign(
  model: Model,
  num_clients: int,
  *,
  max_examples: int,
  feature_shape: tuple[int, ...],
  client: ClientConfig,
  cohort: CohortConfig,
  config: FedAlignConfig | None = None,
  server_learning_rate: float | Schedule = 1.0,
  aggregator: Aggregator | None = None,
  dataset_name: str = "the dataset",
) -> FederatedAlgorithm:
  """FedAlign on the FedAvg round (see the module docstring).

  Args:
    model: The network; it must provide `apply_features`.
    num_clients: Clients in the population.
    max_examples: Padded training rows per client, which fixes the pool's
      shape.
    feature_shape: Shape of one example: `(height, width, channels)` or
      `(features,)`.
    client: Local training settings; `client.loss_fn` is the loss of each
      view.
    cohort: Cohort sampling, chunking and weighting.
    config: FedAlign's settings; None takes the defaults.
    server_learning_rate: FedAvg's server step size.
    aggregator: Replaces the weighted mean of the deltas.
    dataset_name: Used in error messages.

  Raises:
    ValueError: For invalid settings, a model without features, or a
      feature shape that is neither an image nor a tabular row.
  """
  config = config or FedAlignConfig()
  feature_shape = tuple(feature_shape)
  validate_config(config, feature_shape)
  if model.apply_features is None:
    raise ValueError(
      "fedalign needs a model that returns the features its head reads "
      "(Model.apply_features), and this model has none; use a flax zoo "
      "model (--config.model.library=flax)."
    )
  image = len(feature_shape) == 3
  entries = pool_entries(max_examples, config.style_fraction, image)
  objective_for = make_objective(model, config, client.loss_fn, image)

  def init_extra(params):
    del params
    shape = (num_clients, entries, feature_shape[-1])
    return StylePool(
      mean=jnp.zeros(shape),
      std=jnp.ones(shape),
      valid=jnp.zeros(shape[:2], bool),
    )

  def objective_hook(context: ClientContext) -> Objective:
    return objective_for(context.extra, context.client_id)

  schedule = as_schedule(server_learning_rate, "server learning_rate")
  inner = build_fedavg_family(
    model,
    num_clients,
    client=client,
    cohort=cohort,
    server_optimizer=optax.sgd(schedule),
    hooks=ClientHooks(init_extra=init_extra, objective=objective_hook),
    aggregator=aggregator,
    dataset_name=dataset_name,
  )

  def run_round(state: ServerState, data: FederatedData, rng: jax.Array):
    pool = build_style_pool(
      jnp.asarray(data.train.x),
      jnp.asarray(data.train.num_examples),
      jax.random.fold_in(rng, _POOL_STREAM),
      config.style_fraction,
    )
    return inner.run_round(state._replace(extra=pool), data, rng)

  return inner._replace(run_round=run_round, pieces=None)


def config_from_section(section: ml_collections.ConfigDict) -> FedAlignConfig:
  """Reads `FedAlignConfig` fields from a config section, with defaults."""
  defaults = FedAlignConfig()
  values = {}
  for name in FedAlignConfig._fields:
    default = getattr(defaults, name)
    value = section.get(name, default)
    values[name] = type(default)(value)
  return FedAlignConfig(**values)


def from_config(
  config: ml_collections.ConfigDict,
  model: Model,
  data: FederatedData,
  *,
  client: ClientConfig,
  cohort: CohortConfig,
  server_learning_rate: float | Schedule,
  aggregator: Aggregator | None,
  dataset_name: str,
) -> FederatedAlgorithm:
  """Builds FedAlign from `config.algorithm`, with `FedAlignConfig` defaults.

  Reads `style_source`, `style_fraction`, `mix_alpha`, `mix_probability`,
  `supcon_weight`, `js_weight`, `consistency_weight`, `temperature` and
  `standard_supcon`.
  """
  return fedalign(
    model,
    data.num_clients,
    max_examples=data.train.max_examples,
    feature_shape=data.feature_shape,
    client=client,
    cohort=cohort,
    config=config_from_section(config.algorithm),
    server_learning_rate=server_learning_rate,
    aggregator=aggregator,
    dataset_name=dataset_name,
  )
