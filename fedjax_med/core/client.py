"""Local training of one client under `lax.scan`, written to be vmapped.

Batches are drawn from a client's padded rows with fixed shapes. Each epoch
is a fresh random permutation of the client's real rows; step `s` takes the
next `b = min(batch_size, num_examples)` positions of that sequence, so a
batch may span the end of one epoch and the start of the next, and a client
smaller than `batch_size` trains on all its rows with the rest of the batch
masked out. A client with no rows trains on an all-masked batch, whose data
loss and gradient are zero.

Algorithms change local training through one hook, `regularizer(params)`,
a scalar added to every step's loss: FedProx adds a proximal term and
SCAFFOLD a linear term whose gradient is its control-variate correction.

Methods whose local loss depends on the batch beyond the data loss (MOON's
contrastive term, UniVarFL's variance and uniformity terms) replace the
whole step objective through `objective`; `default_objective` is the one
used otherwise.

A third hook, `batch_gradient`, replaces how a step draws its batch and
computes the data gradient; DP-SGD (`fedjax_med.privacy.dp_sgd`) uses it to
sample its own batches and clip and noise per-example gradients. Without it
local training takes the path described above.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from fedjax_med import losses
from fedjax_med.models.base import Model

PyTree = Any
# `(params, x [*feature_shape], y [], rng) -> scalar`: one example's loss.
ExampleLoss = Callable[[PyTree, jax.Array, jax.Array, jax.Array], jax.Array]
# `(params, model_state, x, y, mask, rng) -> (loss, (data_loss, model_state))`:
# one local step's objective on a masked batch.
Objective = Callable[..., tuple[jax.Array, tuple[jax.Array, PyTree]]]
# `(example_loss, params, batch, step_key) -> (data_gradient, data_loss)`.
BatchGradient = Callable[
  [ExampleLoss, PyTree, "ClientBatch", jax.Array], tuple[PyTree, jax.Array]
]


class ClientBatch(NamedTuple):
  """One client's padded rows.

  Attributes:
    x: `[max_examples, *feature_shape]`.
    y: `[max_examples]` int labels.
    num_examples: Scalar int; rows `[0, num_examples)` are real.
  """

  x: jax.Array
  y: jax.Array
  num_examples: jax.Array


class LocalResult(NamedTuple):
  """Outcome of local training.

  Attributes:
    params: Trained parameters.
    model_state: Non-trainable collections after training (e.g.
      "batch_stats"); an empty dict for stateless models.
    mean_loss: Mean data loss over the local steps (without regularizer).
  """

  params: PyTree
  model_state: PyTree
  mean_loss: jax.Array


# local_train draws every epoch's permutation before its step loop when the
# table of `num_steps + 1` permutations has at most this many rows per
# client. On XLA:CPU a random draw inside the loop runs as a loop of its own
# on every step. A larger table is drawn step by step to bound memory.
MAX_PRESAMPLED_ROWS = 4096
# Up to this many padded rows, a permutation is ordered by counting
# comparisons (n^2 work and no sort op). In a one-off timing (jax 0.10.2,
# XLA:CPU, 2-core AMD EPYC), sorting 250 rows of 16 keys took 0.22 ms and
# counting 0.09 ms, and at 32 keys 0.44 against 0.12 ms. From 64 keys on,
# XLA stored the n^2 comparisons (84 MB for 1000 clients' 5 epochs, against
# 5 MB for the sort).
MAX_COUNTING_SORT_ROWS = 32


def stable_argsort(keys: jax.Array) -> jax.Array:
  """`jnp.argsort(keys, stable=True)` of a vector, by counting when short."""
  (n,) = keys.shape
  if n > MAX_COUNTING_SORT_ROWS:
    return jnp.argsort(keys, stable=True)
  index = jnp.arange(n)
  # rank[i]: the entries that a stable sort puts before entry i.
  before = (keys[None, :] < keys[:, None]) | (
    (keys[None, :] == keys[:, None]) & (index[None, :] < index[:, None])
  )
  rank = jnp.sum(before, axis=1)
  # The result holds, at position r, the entry whose rank is r.
  return jnp.sum(
    jnp.where(rank[None, :] == index[:, None], index[None, :], 0), axis=1
  )


def epoch_permutations(
  key: jax.Array,
  epochs: jax.Array,
  num_examples: jax.Array,
  max_examples: int,
) -> jax.Array:
  """Row orders of the given epochs, shape `[len(epochs), max_examples]`.

  Entries `[0, num_examples)` of each row are a permutation of the real
  rows; the padding rows come after them.
  """

  def permutation(epoch):
    # Padding rows get sort key 2 > any uniform draw, so real rows come
    # first and rows [0, n) of the result are a permutation of them.
    scores = jax.random.uniform(jax.random.fold_in(key, epoch), (max_examples,))
    scores = jnp.where(jnp.arange(max_examples) < num_examples, scores, 2.0)
    return stable_argsort(scores)

  return jax.vmap(permutation)(epochs)


def batch_indices(
  key: jax.Array,
  step: jax.Array,
  num_examples: jax.Array,
  max_examples: int,
  batch_size: int,
  permutations: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Row indices and mask of local step `step`'s batch.

  Args:
    key: The client's batch key.
    step: The local step.
    num_examples: The client's real rows.
    max_examples: The client's padded rows (static).
    batch_size: Batch slots (static).
    permutations: Optional `epoch_permutations(key, arange(E), ...)` for
      an `E` above the last epoch that `step` reaches; drawn here if None.
      Both give the same batch.

  Returns:
    `(indices, mask)`, each of shape `[batch_size]`.
  """
  n = jnp.maximum(num_examples, 1)
  b = jnp.minimum(batch_size, n)
  slot = jnp.arange(batch_size)
  position = step * b + slot
  first_epoch = (step * b) // n
  # Because b <= n, a batch spans at most two epochs.
  if permutations is None:
    perm_now, perm_next = epoch_permutations(
      key, jnp.stack([first_epoch, first_epoch + 1]), num_examples, max_examples
    )
  else:
    perm_now = permutations[first_epoch]
    perm_next = permutations[first_epoch + 1]
  within = position % n
  indices = jnp.where(
    position // n == first_epoch, perm_now[within], perm_next[within]
  )
  mask = (slot < b) & (num_examples > 0)
  return indices, mask


def default_objective(
  model: Model,
  loss_fn: Callable[[jax.Array, jax.Array], jax.Array] = losses.cross_entropy,
) -> Objective:
  """Returns the masked mean of `loss_fn` over a batch, as an `Objective`.

  The returned loss and the data loss are the same number.
  """

  def objective(params, model_state, x, y, mask, rng):
    logits, new_state = model.apply(
      {"params": params, **model_state}, x, train=True, rng=rng
    )
    data_loss = losses.masked_mean(loss_fn(logits, y), mask)
    return data_loss, (data_loss, new_state)

  return objective


def local_train(
  model: Model,
  variables: PyTree,
  batch: ClientBatch,
  key: jax.Array,
  *,
  optimizer: optax.GradientTransformation,
  num_steps: int,
  batch_size: int,
  regularizer: Callable[[PyTree], jax.Array] | None = None,
  loss_fn: Callable[[jax.Array, jax.Array], jax.Array] = losses.cross_entropy,
  batch_gradient: BatchGradient | None = None,
  objective: Objective | None = None,
) -> LocalResult:
  """Runs `num_steps` optimizer steps on one client's data.

  Args:
    model: The network.
    variables: Starting variables, `{"params": ..., **model_state}`.
    batch: The client's padded rows.
    key: The client's key; batches and dropout are derived from it.
    optimizer: Local optimizer; its state starts fresh every call.
    num_steps: Local steps (static).
    batch_size: Examples per step (static).
    regularizer: Optional scalar function of the parameters added to each
      step's loss.
    loss_fn: Per-example loss `(logits [batch, outputs], labels [batch]) ->
      [batch]`; cross-entropy by default.
    batch_gradient: Optional replacement for batch sampling and the data
      gradient of each step, used by DP-SGD. It receives one example's
      loss, the parameters, the client's padded rows and the step's key.
      The regularizer's gradient is added to its result, and `batch_size`
      is then unused here.
    objective: Optional replacement for the step objective (see
      `Objective`); `default_objective(model, loss_fn)` when None. The
      regularizer is added to it. It cannot be combined with
      `batch_gradient`.

  Returns:
    The trained parameters, model state and mean data loss.

  Raises:
    ValueError: If `batch_gradient` is given for a model with non-trainable
      state.
  """
  params = variables["params"]
  model_state = {k: v for k, v in variables.items() if k != "params"}
  chex.assert_rank([batch.y, batch.num_examples], [1, 0])
  chex.assert_equal_shape_prefix([batch.x, batch.y], 1)
  max_examples = batch.x.shape[0]
  batch_key, dropout_key = jax.random.split(key)
  if batch_gradient is not None and objective is not None:
    raise ValueError(
      "a custom local objective cannot be combined with a batch_gradient "
      "hook such as DP-SGD's; use privacy.mode='client' or 'none' with this "
      "algorithm."
    )
  if batch_gradient is not None:
    return _train_with_batch_gradient(
      model,
      params,
      model_state,
      batch,
      batch_key,
      optimizer=optimizer,
      num_steps=num_steps,
      regularizer=regularizer,
      loss_fn=loss_fn,
      batch_gradient=batch_gradient,
    )

  # A batch never holds more real rows than the client has, so slots past
  # max_examples would always be padding: drop them from the static shape.
  slots = min(batch_size, max_examples)

  step_objective = objective or default_objective(model, loss_fn)

  def full_objective(params, model_state, x, y, mask, rng):
    total, aux = step_objective(params, model_state, x, y, mask, rng)
    if regularizer is not None:
      total = total + regularizer(params)
    return total, aux

  # Step s starts in epoch (s * b) // n <= s, so its batch lies within
  # epochs [0, num_steps].
  permutations = None
  if (num_steps + 1) * max_examples <= MAX_PRESAMPLED_ROWS:
    permutations = epoch_permutations(
      batch_key, jnp.arange(num_steps + 1), batch.num_examples, max_examples
    )

  def step(carry, step_index):
    params, model_state, opt_state = carry
    indices, mask = batch_indices(
      batch_key,
      step_index,
      batch.num_examples,
      max_examples,
      slots,
      permutations,
    )
    x = jnp.take(batch.x, indices, axis=0)
    y = jnp.take(batch.y, indices, axis=0)
    rng = jax.random.fold_in(dropout_key, step_index)
    grads, (data_loss, new_state) = jax.grad(full_objective, has_aux=True)(
      params, model_state, x, y, mask, rng
    )
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    # A step with no real rows must not move normalization statistics.
    has_rows = jnp.any(mask)
    model_state = jax.tree.map(
      lambda new, old: jnp.where(has_rows, new, old), new_state, model_state
    )
    return (params, model_state, opt_state), data_loss

  carry = (params, model_state, optimizer.init(params))
  (params, model_state, _), step_losses = jax.lax.scan(
    step, carry, jnp.arange(num_steps)
  )
  return LocalResult(params, model_state, jnp.mean(step_losses))


def _train_with_batch_gradient(
  model: Model,
  params: PyTree,
  model_state: PyTree,
  batch: ClientBatch,
  key: jax.Array,
  *,
  optimizer: optax.GradientTransformation,
  num_steps: int,
  regularizer: Callable[[PyTree], jax.Array] | None,
  loss_fn: Callable[[jax.Array, jax.Array], jax.Array],
  batch_gradient: BatchGradient,
) -> LocalResult:
  """Local training whose data gradient comes from `batch_gradient`."""
  if model_state:
    raise ValueError(
      f"the model has non-trainable state {sorted(model_state)}, which "
      "per-example gradients cannot privatize (normalization statistics "
      "mix examples and are released unnoised); use a model without "
      "batch normalization, e.g. with GroupNorm or LayerNorm."
    )

  def example_loss(params, x, y, rng):
    logits, _ = model.apply({"params": params}, x[None], train=True, rng=rng)
    return loss_fn(logits, y[None])[0]

  def step(carry, step_index):
    params, opt_state = carry
    grads, data_loss = batch_gradient(
      example_loss, params, batch, jax.random.fold_in(key, step_index)
    )
    if regularizer is not None:
      grads = jax.tree.map(jnp.add, grads, jax.grad(regularizer)(params))
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state), data_loss

  carry = (params, optimizer.init(params))
  (params, _), step_losses = jax.lax.scan(step, carry, jnp.arange(num_steps))
  return LocalResult(params, model_state, jnp.mean(step_losses))
