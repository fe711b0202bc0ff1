"""Exact federated Newton and the round shared by the second-order methods.

Every client `k` holds the regularized empirical risk

  F_k(w) = (1 / n_k) sum_i loss(x_i, y_i; w) + (l2 / 2) ||w||^2

over its training rows, with the configured client loss (`client.loss_fn`,
cross-entropy by default) and `w` all trainable parameters flattened into
one vector of length `d` (biases are regularized too). With
`cohort.weighting="example"` the server weights client `k` by
`p_k = n_k / N`, so over a full cohort the federated objective
`sum_k p_k F_k(w)` equals the pooled objective, the mean loss over all
`N` training rows plus `(l2 / 2) ||w||^2`; "uniform" gives every client with
data the same weight instead.

One round of federated Newton: the server sends `w`, every client of the
cohort sends its gradient `g_k = grad F_k(w)` and its Hessian
`H_k = hess F_k(w)` (a `d x d` matrix, built with `jax.hessian`, i.e. `d`
Hessian-vector products by forward-over-reverse differentiation), and the
server steps

  w <- w - newton_step * (sum_k p_k H_k)^{-1} (sum_k p_k g_k).

On a convex problem this is the centralized Newton method, the reference
that sketched methods approximate; with `newton_step = 1` it converges
quadratically near the optimum and solves a quadratic objective in one
round. The round is one compiled program: the cohort's gradients and
Hessians are summed with `core.engine.map_cohort`, and the server solves
the `d x d` system with a Cholesky factorization.

Intended use: convex generalized linear models (logistic and softmax
regression) or a last-layer problem with a small `d`, because every client
forms a `d x d` matrix. The model runs in inference mode, and its
non-trainable state (if any) is passed through unchanged. FedNS
(`fedns.py`) and FLeNS (`flens.py`) reuse `build_second_order` with other
curvature messages.

Choices this implementation makes:
  * The step is `newton_step` (default 1) every round, unless
    `line_search` is set (default off here, on for FedNS and FLeNS): then a
    second exchange sends the direction, every client returns its risk at
    the 12 sizes `newton_step * 0.5^j`, and the server takes the largest
    size that meets the Armijo condition with constant 0.1 (the smallest
    size if none does). Those `d` floats down and 12 up per client are
    counted in the byte metrics.
  * A round whose cohort holds no data, or whose linear solve is not finite
    (a singular curvature estimate), leaves the parameters unchanged.
  * Byte accounting: `uplink_bytes` counts the `d` gradient entries and the
    curvature message (`d * d` entries for the full Hessian) per client,
    `downlink_bytes` the `d` parameters sent to each client; both are
    totals over the cohort, with the parameters' dtype itemsize.
  * `train_loss` is the weighted mean of the clients' `F_k` at the point
    where the gradients are taken.

Options in `config.algorithm`: `l2` (default 1e-3), `newton_step`
(default 1.0) and `line_search` (default False). Set `float64 = True` in
the config to run in double precision (see
`configs/fed_heart_disease_newton.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from jax.flatten_util import ravel_pytree

from fedjax_med import losses
from fedjax_med.algorithms.fedavg import ClientConfig, CohortConfig
from fedjax_med.algorithms.settings import WEIGHTINGS
from fedjax_med.core.algorithm import FederatedAlgorithm
from fedjax_med.core.client import ClientBatch
from fedjax_med.core.engine import ClientOutput, map_cohort
from fedjax_med.core.sampling import make_sampler
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.models.base import Model

PyTree = Any
LossFn = Callable[[jax.Array, jax.Array], jax.Array]

DEFAULT_L2 = 1e-3
DEFAULT_NEWTON_STEP = 1.0
# Backtracking line search: Armijo constant and shrink factor (those of
# the FLeNS authors' FedNDES script), and the number of candidate sizes.
BACKTRACKING_ARMIJO = 0.1
BACKTRACKING_SHRINK = 0.5
NUM_BACKTRACKING_SIZES = 12


class SecondOrderState(NamedTuple):
  """State of a second-order run.

  Attributes:
    params: Global trainable parameters `w_t`.
    model_state: Non-trainable collections, passed through unchanged.
    previous_params: `w_{t-1}` (equal to `params` before the first round),
      which FLeNS's look-ahead reads.
    momentum_rounds: Rounds since the look-ahead momentum last restarted,
      int32 scalar (equal to `round` when it never restarts).
    risk: The cohort's risk at `params` as the line search measured it
      (`inf` before the first round or without a line search).
    round: Rounds completed, int32 scalar.
  """

  params: PyTree
  model_state: PyTree
  previous_params: PyTree
  momentum_rounds: jax.Array
  risk: jax.Array
  round: jax.Array


class ClientProblem(NamedTuple):
  """One client's regularized risk as functions of the flat parameters.

  Attributes:
    objective: `w -> F_k(w)`, a scalar.
    sample_root: `w -> A`, `[max_examples * num_outputs, d]`, with
      `A^T A` the Gauss-Newton matrix of the mean data loss (its exact
      Hessian for a generalized linear model). Padding rows are zero.
  """

  objective: Callable[[jax.Array], jax.Array]
  sample_root: Callable[[jax.Array], jax.Array]


class Curvature(NamedTuple):
  """The curvature message a client sends, and how the server reads it.

  Attributes:
    message: `(problem, w, key) -> message`, computed by the client at the
      point `w` from its `ClientProblem`.
    hessian: `message -> [d, d]`, the client's curvature estimate, which
      the server averages with the weights `p_k`.
    server_l2: Whether the server adds `l2 * I` to the averaged curvature
      (for messages that carry the data term only).
    message_size: `d -> entries in one message`, for byte accounting.
  """

  message: Callable[[ClientProblem, jax.Array, jax.Array], PyTree]
  hessian: Callable[[PyTree], jax.Array]
  server_l2: bool
  message_size: Callable[[int], int]


def client_problem(
  model: Model,
  loss_fn: LossFn,
  l2: float,
  unravel: Callable[[jax.Array], PyTree],
  model_state: PyTree,
  batch: ClientBatch,
) -> ClientProblem:
  """Builds client `batch`'s regularized risk over its real rows."""
  mask = jnp.arange(batch.y.shape[0]) < batch.num_examples

  def logits_fn(w):
    logits, _ = model.apply({"params": unravel(w), **model_state}, batch.x)
    return logits

  def objective(w):
    data_loss = losses.masked_mean(loss_fn(logits_fn(w), batch.y), mask)
    return data_loss + 0.5 * l2 * jnp.sum(w * w)

  def sample_root(w):
    logits = logits_fn(w)
    # [rows, outputs, d]: each row's logits differentiated by w.
    jacobian = jax.jacrev(logits_fn)(w)

    def loss_hessian(z, y):
      return jax.hessian(lambda z: loss_fn(z[None], y[None])[0])(z)

    # Symmetric square root of each row's loss Hessian in the logits.
    curvature = jax.vmap(loss_hessian)(logits, batch.y)
    values, vectors = jnp.linalg.eigh(curvature)
    root_values = jnp.sqrt(jnp.maximum(values, 0.0))
    roots = jnp.einsum("rij,rj,rkj->rik", vectors, root_values, vectors)
    n = jnp.maximum(batch.num_examples, 1).astype(w.dtype)
    scale = mask.astype(w.dtype) / jnp.sqrt(n)
    rows = jnp.einsum("r,rij,rjd->rid", scale, roots, jacobian)
    return rows.reshape(-1, w.shape[0])

  return ClientProblem(objective, sample_root)


def full_hessian() -> Curvature:
  """Each client sends its exact `d x d` Hessian (regularizer included)."""
  return Curvature(
    message=lambda problem, w, key: jax.hessian(problem.objective)(w),
    hessian=lambda message: message,
    server_l2=False,
    message_size=lambda d: d * d,
  )


def validate_second_order(
  l2: float, newton_step: float, weighting: str
) -> None:
  """Raises ValueError for settings the second-order round cannot use."""
  if not l2 >= 0:
    raise ValueError(
      f"l2={l2} must be non-negative; pass e.g. --config.algorithm.l2=1e-3."
    )
  if not newton_step > 0:
    raise ValueError(
      f"newton_step={newton_step} must be positive; 1.0 is the full "
      "Newton step."
    )
  if weighting not in WEIGHTINGS:
    raise ValueError(
      f"weighting={weighting!r} is unknown; use one of {WEIGHTINGS}."
    )


def build_second_order(
  model: Model,
  num_clients: int,
  *,
  cohort: CohortConfig,
  curvature: Curvature,
  loss_fn: LossFn = losses.cross_entropy,
  l2: float = DEFAULT_L2,
  newton_step: float = DEFAULT_NEWTON_STEP,
  momentum: Callable[[jax.Array], jax.Array] | None = None,
  step_from_lookahead: bool = True,
  line_search: bool = False,
  restart: bool = False,
  dataset_name: str = "the dataset",
) -> FederatedAlgorithm:
  """Builds a Newton-type algorithm from its curvature message.

  Args:
    model: The network (a generalized linear model for exact results).
    num_clients: Clients in the population.
    cohort: Cohort sampling, chunking and weighting.
    curvature: What each client sends besides its gradient.
    loss_fn: Per-example loss `(logits, labels) -> [batch]`.
    l2: Weight of `(l2 / 2) ||w||^2` in every client's risk.
    newton_step: Step size of the Newton step.
    momentum: Optional `round -> beta_t` (FLeNS): clients then evaluate
      at the look-ahead `v_t = w_t + beta_t (w_t - w_{t-1})`, where
      `round` counts the rounds completed before this one.
    step_from_lookahead: With `momentum`, whether the step starts from
      `v_t` (True) or from `w_t`.
    line_search: Whether to backtrack the step size from `newton_step`
      (see `backtracking_step`).
    dataset_name: Used in error messages.

  Returns:
    The algorithm's pure functions.
  """
  validate_second_order(l2, newton_step, cohort.weighting)
  if restart and not line_search:
    raise ValueError(
      "restart=True needs line_search=True: the restart test compares the "
      "risks that the line search measures."
    )
  num_step_sizes = NUM_BACKTRACKING_SIZES if line_search else 1
  sampler = make_sampler(
    cohort.sampling,
    num_clients,
    cohort.clients_per_round,
    cohort.poisson_rate,
    dataset_name,
  )

  def init(rng, variables):
    del rng  # Initialization is deterministic given the variables.
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    return SecondOrderState(
      params=params,
      model_state=model_state,
      previous_params=params,
      momentum_rounds=jnp.zeros((), jnp.int32),
      risk=jnp.full((), jnp.inf, ravel_pytree(params)[0].dtype),
      round=jnp.zeros((), jnp.int32),
    )

  def run_round(state: SecondOrderState, data: FederatedData, rng):
    data = jax.tree.map(jnp.asarray, data)  # Host arrays work unjitted too.
    sample_key, clients_key = jax.random.split(rng)
    cohort_sample = sampler(sample_key)
    w, unravel = ravel_pytree(state.params)
    d = w.shape[0]

    point = w
    if momentum is not None:
      previous, _ = ravel_pytree(state.previous_params)
      beta = momentum(state.momentum_rounds).astype(w.dtype)
      point = w + beta * (w - previous)
    starts_at_point = momentum is None or step_from_lookahead
    start = point if starts_at_point else w

    def client_setup(client_id):
      batch = ClientBatch(
        x=data.train.x[client_id],
        y=data.train.y[client_id],
        num_examples=data.train.num_examples[client_id],
      )
      problem = client_problem(
        model, loss_fn, l2, unravel, state.model_state, batch
      )
      n = batch.num_examples.astype(w.dtype)
      if cohort.weighting == "example":
        return problem, n, n
      return problem, (n > 0).astype(w.dtype), n

    def client_fn(client_id):
      problem, weight, n = client_setup(client_id)
      loss, gradient = jax.value_and_grad(problem.objective)(point)
      message = curvature.message(
        problem, point, jax.random.fold_in(clients_key, client_id)
      )
      start_loss = loss if starts_at_point else problem.objective(start)
      summed = {
        "weighted_gradient": weight * gradient,
        "weighted_hessian": weight * curvature.hessian(message),
        "weighted_loss": weight * loss,
        "weighted_start_loss": weight * start_loss,
        "weight": weight,
        "num_examples": n,
      }
      return ClientOutput(summed, ())

    summed, _ = map_cohort(
      client_fn, cohort_sample, cohort.clients_per_chunk, cohort.mesh
    )

    # Server: average, then solve the d x d Newton system.
    total = summed["weight"]
    has_data = total > 0
    inverse = jnp.where(has_data, 1.0 / jnp.maximum(total, 1e-30), 0.0)
    gradient = summed["weighted_gradient"] * inverse
    hessian = summed["weighted_hessian"] * inverse
    if curvature.server_l2:
      hessian = hessian + l2 * jnp.eye(d, dtype=w.dtype)
    direction = jax.scipy.linalg.solve(hessian, gradient, assume_a="pos")
    step_sizes = newton_step * BACKTRACKING_SHRINK ** jnp.arange(
      num_step_sizes, dtype=w.dtype
    )

    # Backtracking: a second exchange in which the server sends the
    # direction and every client returns its risk at each candidate.
    if line_search:

      def candidate_fn(client_id):
        problem, weight, _ = client_setup(client_id)
        losses_at = jax.vmap(
          lambda size: problem.objective(start - size * direction)
        )(step_sizes)
        return ClientOutput({"weighted_losses": weight * losses_at}, ())

      candidates, _ = map_cohort(
        candidate_fn, cohort_sample, cohort.clients_per_chunk, cohort.mesh
      )
      risks = candidates["weighted_losses"] * inverse
      decrease = jnp.dot(gradient, direction)
      current = summed["weighted_start_loss"] * inverse
      accepted = risks <= current - BACKTRACKING_ARMIJO * step_sizes * decrease
      # The largest accepted size, or the smallest candidate if none is.
      chosen = jnp.minimum(
        jnp.argmax(jnp.append(accepted, True)), num_step_sizes - 1
      )
      step_size = step_sizes[chosen]
      new_risk = risks[chosen]
    else:
      step_size = step_sizes[0]
      new_risk = jnp.full((), jnp.inf, w.dtype)
    candidate = start - step_size * direction
    step = has_data & jnp.all(jnp.isfinite(candidate))
    new_w = jnp.where(step, candidate, w)

    cohort_size = jnp.sum(cohort_sample.mask.astype(jnp.int32))
    itemsize = w.dtype.itemsize
    uplink = (d + curvature.message_size(d)) * itemsize
    downlink = d * itemsize
    if line_search:
      uplink += num_step_sizes * itemsize
      downlink += d * itemsize
    # Function restart: the momentum starts over after a round that raised
    # the risk (known from the line search, so it costs no exchange).
    momentum_rounds = state.momentum_rounds + 1
    if restart:
      raised = step & (new_risk > state.risk)
      momentum_rounds = jnp.where(raised, 0, momentum_rounds)
    new_state = SecondOrderState(
      params=unravel(new_w),
      model_state=state.model_state,
      previous_params=jax.tree.map(
        lambda current, previous: jnp.where(step, current, previous),
        state.params,
        state.previous_params,
      ),
      momentum_rounds=momentum_rounds,
      risk=jnp.where(step, new_risk, state.risk),
      round=state.round + 1,
    )
    metrics = {
      "train_loss": summed["weighted_loss"] * inverse,
      "gradient_norm": jnp.linalg.norm(gradient),
      "step_norm": jnp.linalg.norm(new_w - w),
      "cohort_size": cohort_size,
      "cohort_examples": summed["num_examples"],
      "uplink_bytes": cohort_size.astype(jnp.float32) * uplink,
      "downlink_bytes": cohort_size.astype(jnp.float32) * downlink,
      "step_size": jnp.where(step, step_size, 0.0),
    }
    return new_state, metrics

  def global_variables(state: SecondOrderState):
    return {"params": state.params, **state.model_state}

  return FederatedAlgorithm(init, run_round, global_variables)


def newton(
  model: Model,
  num_clients: int,
  *,
  cohort: CohortConfig,
  loss_fn: LossFn = losses.cross_entropy,
  l2: float = DEFAULT_L2,
  newton_step: float = DEFAULT_NEWTON_STEP,
  line_search: bool = False,
  dataset_name: str = "the dataset",
) -> FederatedAlgorithm:
  """Exact federated Newton: clients send gradients and full Hessians."""
  return build_second_order(
    model,
    num_clients,
    cohort=cohort,
    curvature=full_hessian(),
    loss_fn=loss_fn,
    l2=l2,
    newton_step=newton_step,
    line_search=line_search,
    dataset_name=dataset_name,
  )


def newton_options(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Reads `algorithm.l2` and `algorithm.newton_step`, with defaults."""
  section = config.algorithm
  return {
    "l2": float(section.get("l2", DEFAULT_L2)),
    "newton_step": float(section.get("newton_step", DEFAULT_NEWTON_STEP)),
  }


def from_config(
  config: ml_collections.ConfigDict,
  model: Model,
  data: FederatedData,
  *,
  client: ClientConfig,
  cohort: CohortConfig,
  server_learning_rate,
  aggregator,
  dataset_name: str,
) -> FederatedAlgorithm:
  """Builds exact federated Newton from `config.algorithm`.

  The client loss is `client.loss_fn`; the client optimizer, learning
  rate and local steps, and the server learning rate are unused.
  """
  del server_learning_rate
  reject_aggregator(aggregator, "newton")
  reject_compression(client, "newton")
  return newton(
    model,
    data.num_clients,
    cohort=cohort,
    loss_fn=client.loss_fn,
    line_search=bool(config.algorithm.get("line_search", False)),
    dataset_name=dataset_name,
    **newton_options(config),
  )


def reject_compression(client: ClientConfig, method: str) -> None:
  """Raises ValueError when the config compresses the uplink or downlink.

  The compressors of `config.compression` operate on a FedAvg-family
  delta or model; a second-order round sends gradients and curvature
  messages instead, so they would be silently ignored.
  """
  links = [
    link
    for link in ("uplink", "downlink")
    if getattr(client.compression, link) is not None
  ]
  if links:
    raise ValueError(
      f"algorithm.name={method!r} does not compress its messages, but "
      f"compression.{links[0]} names a compressor; set "
      f"compression.{links[0]}.name='identity' (the sketch size "
      "algorithm.sketch_size is what shrinks the curvature message)."
    )


def reject_aggregator(aggregator, method: str) -> None:
  """Raises ValueError when privacy settings produced an aggregator."""
  if aggregator is not None:
    raise ValueError(
      f"algorithm.name={method!r} does not support differential privacy "
      "or secure aggregation: its gradients and curvature messages are "
      "sent without clipping, noise or masking. Set privacy.mode='none' "
      "and privacy.secure_aggregation=False."
    )
