"""UniVarFL: FedAvg with local variance and uniformity regularizers.

Reference: S. Gupta, N. Jangid, A. Sethi, "UniVarFL: Uniformity and Variance
Regularized Federated Learning for Heterogeneous Data", AAAI-26 Student
Abstract, arXiv:2506.08167.

This module is a reconstruction. Only UniVarFL's abstract was available and
its code link is dead. The abstract's two regularizers (classifier variance
and hyperspherical uniformity of the representation, both computed on the
client's own batch) are those of FedUV (H. Son, J. Kim, H. Chung, Y. Huang,
B. Liu, "FedUV: Uniformity and Variance for Heterogeneous Federated
Learning", CVPR 2024, arXiv:2402.18372), so the formulas follow FedUV's
reference code (github.com/sonhamin/FedUV, `algs/feduv.py`). Each local step
minimizes, on a batch with logits `o` and features `z`,

  L = L_data(o, y) + variance_weight * L_var + uniformity_weight * L_unif,

where `L_data` is the configured client loss (cross-entropy by default),
`L_var = fedjax_med.losses.representation.variance_hinge(softmax(o))` and
`L_unif = uniformity(z)`. The server is FedAvg: nothing beyond the delta is
sent, and the server optimizer and aggregator are the configured ones.

Choices:
  * `variance_target="probabilities"` (default) applies the variance hinge
    to the class probabilities with `gamma = 1 / sqrt(C)`, as FedUV's code
    does. A binary model's one logit gives the two columns `[1 - p, p]`.
    `"features"` instead applies the hinge to each feature dimension's
    standard deviation, at `feature_std_target` (1 by default, as in
    VICReg's variance term). That is the reading of "per-dimension variance
    of client representations". The default follows the only available
    code.
  * `stop_gradient_bandwidth=True` treats the uniformity bandwidth (the
    median pairwise squared distance) as a constant, which is more stable.
    FedUV's code lets the gradient flow through the median; set it False to
    match.
  * Defaults `variance_weight=2.5` and `uniformity_weight=0.5` are FedUV's
    code defaults (`std_coeff`, `unif_coeff`), not tuned here.
  * `z` is the input of the model's last dense layer (`Model.apply_features`,
    after the last hidden ReLU in the zoo's MLP). FedUV adds a two-layer
    projection MLP (out 256) between the backbone and the classifier, and
    the zoo models have none. A model without a hidden layer (logistic
    regression) has the input as its features, so `L_unif` does not depend
    on the parameters and only the variance term acts.
  * The variance and uniformity terms are 0 on a batch with fewer than 2
    real rows, where they are undefined.
"""

from __future__ import annotations

from typing import NamedTuple

import ml_collections
import optax

from fedjax_med import losses
from fedjax_med.algorithms.fedavg import (
  ClientConfig,
  ClientContext,
  ClientHooks,
  CohortConfig,
  Schedule,
  as_schedule,
  build_fedavg_family,
)
from fedjax_med.core.aggregation import Aggregator
from fedjax_med.core.algorithm import FederatedAlgorithm
from fedjax_med.core.client import Objective
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.losses import representation
from fedjax_med.models.base import Model

VARIANCE_TARGETS = ("probabilities", "features")


class UniVarFLConfig(NamedTuple):
  """UniVarFL's settings.

  Attributes:
    variance_weight: Weight of the variance hinge; 0 turns it off.
    uniformity_weight: Weight of the uniformity term; 0 turns it off.
    stop_gradient_bandwidth: Whether the uniformity bandwidth is a constant
      for differentiation.
    variance_target: "probabilities" (class probabilities, hinge at
      `1 / sqrt(C)`) or "features" (each feature dimension, hinge at
      `feature_std_target`).
    feature_std_target: Target standard deviation per feature dimension for
      `variance_target="features"`.
  """

  variance_weight: float = 2.5
  uniformity_weight: float = 0.5
  stop_gradient_bandwidth: bool = True
  variance_target: str = "probabilities"
  feature_std_target: float = 1.0


def validate_config(config: UniVarFLConfig) -> None:
  """Raises ValueError for settings UniVarFL cannot use."""
  if not config.variance_weight >= 0:
    raise ValueError(
      f"univarfl variance_weight={config.variance_weight} must be >= 0; "
      "FedUV's default is 2.5 and 0 turns the variance term off."
    )
  if not config.uniformity_weight >= 0:
    raise ValueError(
      f"univarfl uniformity_weight={config.uniformity_weight} must be >= 0; "
      "FedUV's default is 0.5 and 0 turns the uniformity term off."
    )
  if config.variance_target not in VARIANCE_TARGETS:
    raise ValueError(
      f"univarfl variance_target={config.variance_target!r} is unknown; use "
      f"one of {VARIANCE_TARGETS}."
    )
  if not config.feature_std_target > 0:
    raise ValueError(
      f"univarfl feature_std_target={config.feature_std_target} must be "
      "positive, e.g. 1.0."
    )


def require_features(model: Model, method: str) -> None:
  """Raises ValueError if `model` cannot return its features."""
  if model.apply_features is None:
    raise ValueError(
      f"{method} needs a model that returns the features its head reads "
      "(Model.apply_features), and this model has none; use a flax zoo "
      "model (--config.model.library=flax, e.g. --config.model.name=mlp)."
    )


def make_objective(model: Model, config: UniVarFLConfig, loss_fn) -> Objective:
  """Builds UniVarFL's local step objective (see `core.client.Objective`).

  The returned data loss excludes the regularizers. A term whose weight is
  0 is not computed at all, so both weights 0 gives FedAvg's objective.
  """

  def objective(params, model_state, x, y, mask, rng):
    logits, features, new_state = model.apply_features(
      {"params": params, **model_state}, x, train=True, rng=rng
    )
    data_loss = losses.masked_mean(loss_fn(logits, y), mask)
    total = data_loss
    if config.variance_weight > 0:
      if config.variance_target == "probabilities":
        variance = representation.variance_hinge(
          losses.probabilities(logits), mask
        )
      else:
        variance = representation.std_hinge(
          features, mask, config.feature_std_target
        )
      total = total + config.variance_weight * variance
    if config.uniformity_weight > 0:
      spread = representation.uniformity(
        features, mask, config.stop_gradient_bandwidth
      )
      total = total + config.uniformity_weight * spread
    return total, (data_loss, new_state)

  return objective


def univarfl(
  model: Model,
  num_clients: int,
  *,
  client: ClientConfig,
  cohort: CohortConfig,
  config: UniVarFLConfig | None = None,
  server_learning_rate: float | Schedule = 1.0,
  aggregator: Aggregator | None = None,
  dataset_name: str = "the dataset",
) -> FederatedAlgorithm:
  """UniVarFL (FedUV's regularizers) on the FedAvg round.

  Args:
    model: The network; it must provide `apply_features`.
    num_clients: Clients in the population.
    client: Local training settings; `client.loss_fn` is the data loss.
    cohort: Cohort sampling, chunking and weighting.
    config: UniVarFL's settings; None takes the defaults.
    server_learning_rate: FedAvg's server step size.
    aggregator: Replaces the weighted mean of the deltas.
    dataset_name: Used in error messages.

  Raises:
    ValueError: For invalid settings or a model without features.
  """
  config = config or UniVarFLConfig()
  validate_config(config)
  require_features(model, "univarfl")
  objective = make_objective(model, config, client.loss_fn)

  def objective_hook(context: ClientContext) -> Objective:
    del context  # The regularizers read only the local batch.
    return objective

  schedule = as_schedule(server_learning_rate, "server learning_rate")
  return build_fedavg_family(
    model,
    num_clients,
    client=client,
    cohort=cohort,
    server_optimizer=optax.sgd(schedule),
    hooks=ClientHooks(objective=objective_hook),
    aggregator=aggregator,
    dataset_name=dataset_name,
  )


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
  """Builds UniVarFL from `config.algorithm`, with `UniVarFLConfig` defaults.

  Reads `variance_weight`, `uniformity_weight`, `stop_gradient_bandwidth`,
  `variance_target` and `feature_std_target`.
  """
  defaults = UniVarFLConfig()
  section = config.algorithm
  settings = UniVarFLConfig(
    variance_weight=float(
      section.get("variance_weight", defaults.variance_weight)
    ),
    uniformity_weight=float(
      section.get("uniformity_weight", defaults.uniformity_weight)
    ),
    stop_gradient_bandwidth=bool(
      section.get("stop_gradient_bandwidth", defaults.stop_gradient_bandwidth)
    ),
    variance_target=str(
      section.get("variance_target", defaults.variance_target)
    ),
    feature_std_target=float(
      section.get("feature_std_target", defaults.feature_std_target)
    ),
  )
  return univarfl(
    model,
    data.num_clients,
    client=client,
    cohort=cohort,
    config=settings,
    server_learning_rate=server_learning_rate,
    aggregator=aggregator,
    dataset_name=dataset_name,
  )
