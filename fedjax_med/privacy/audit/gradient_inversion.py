"""Gradient inversion: rebuild a client's records from one update.

The attacker is an honest-but-curious server. It has the global parameters
`w` and the model, receives one update, and searches for dummy inputs (and
labels) whose gradient at `w` matches that update:

  min_{x', q'}  D(grad_w L(w; x', q'), g)

where `g` is the observed gradient and `D` a squared L2 or a cosine distance.
The search runs with optax (Adam or L-BFGS) under `lax.scan`, vmapped over a
few random restarts, inside one jit-compiled program. The restart with the
lowest final distance wins.

References:
  L. Zhu, Z. Liu, S. Han, "Deep Leakage from Gradients", NeurIPS 2019,
  arXiv:1906.08935 (L2 gradient matching, soft labels, L-BFGS).
  B. Zhao, K. R. Mopuri, H. Bilen, "iDLG: Improved Deep Leakage from
  Gradients", 2020, arXiv:2001.02610 (the label of a single example from the
  sign of the output layer's gradient).
  J. Geiping, H. Bauermeister, H. Dröge, M. Moeller, "Inverting Gradients -
  How easy is it to break privacy in federated learning?", NeurIPS 2020,
  arXiv:2003.14053 (cosine distance, total variation prior, Adam, restarts).

Choices this implementation makes:
  * The client's loss is the project's cross-entropy of the mean over the
    batch (sigmoid for one logit, softmax otherwise). Dummy labels are
    probabilities, so the same formula covers hard and soft labels.
  * Labels: given labels are used as they are. Otherwise one example gets
    its label analytically (iDLG): the output bias's gradient is
    `softmax(z) - onehot(y)`, negative only at the true class (for one
    logit, `sigmoid(z) - y`, negative exactly when y = 1). Batches of more
    than one example optimize soft labels jointly with the inputs (DLG).
  * The output bias is found without naming conventions: it is the
    parameter leaf whose Jacobian of the logits is the identity.
  * Adam steps are projected onto `input_bounds` when given. L-BFGS runs
    unconstrained and only its result is clipped, because a projection
    would break its line search.
  * The model is applied with `train=False`. For models without dropout or
    BatchNorm this is the function the client differentiated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax import tree_utils as otu

from fedjax_med.models.base import Model
from fedjax_med.privacy.audit.analytic import find_output_bias, recover_label

PyTree = Any

DISTANCES = ("l2", "cosine")
OPTIMIZERS = ("adam", "lbfgs")


class InversionResult(NamedTuple):
  """Outcome of a gradient-inversion attack.

  Attributes:
    x: Reconstructed inputs, `[num_examples, *feature_shape]`.
    label_probs: Reconstructed label probabilities,
      `[num_examples, num_classes]` (two columns for a one-logit model).
    labels: `argmax` of `label_probs`, `[num_examples]` int32.
    matching_loss: Final gradient-matching distance of the chosen restart.
    loss_history: Distance at every optimizer step of the chosen restart,
      `[num_steps]`.
  """

  x: jax.Array
  label_probs: jax.Array
  labels: jax.Array
  matching_loss: jax.Array
  loss_history: jax.Array


def soft_cross_entropy(logits: jax.Array, label_probs: jax.Array) -> jax.Array:
  """Per-example cross-entropy against label probabilities.

  Args:
    logits: `[batch, 1]` for a binary task, else `[batch, num_classes]`.
    label_probs: `[batch, num_classes]` (two columns when binary).

  Returns:
    `[batch]` losses. For one-hot `label_probs` this equals
    `fedjax_med.losses.cross_entropy` with the integer labels.
  """
  if logits.shape[-1] == 1:
    return optax.sigmoid_binary_cross_entropy(
      logits[..., 0], label_probs[..., 1]
    )
  return optax.softmax_cross_entropy(logits, label_probs)


def batch_gradient(
  model: Model,
  params: PyTree,
  x: jax.Array,
  label_probs: jax.Array,
  model_state: PyTree | None = None,
) -> PyTree:
  """Returns the gradient of the batch-mean cross-entropy at `params`.

  Args:
    model: The network.
    params: Trainable parameters.
    x: Inputs `[batch, *feature_shape]`.
    label_probs: Label probabilities `[batch, num_classes]`. Pass
      `one_hot_labels(y, ...)` for integer labels.
    model_state: Non-trainable collections, if any.

  Returns:
    A pytree shaped like `params`: what a client sends after one step of
    federated SGD on this batch.
  """
  model_state = model_state or {}

  def mean_loss(p):
    logits, _ = model.apply({"params": p, **model_state}, x, train=False)
    return jnp.mean(soft_cross_entropy(logits, label_probs))

  return jax.grad(mean_loss)(params)


def one_hot_labels(labels: jax.Array, num_outputs: int) -> jax.Array:
  """One-hot label probabilities, with two columns for a one-logit model."""
  return jax.nn.one_hot(labels, max(num_outputs, 2))


def total_variation(x: jax.Array) -> jax.Array:
  """Mean absolute difference of neighbouring pixels in `[n, h, w, c]`."""
  vertical = jnp.mean(jnp.abs(x[:, 1:, :, :] - x[:, :-1, :, :]))
  horizontal = jnp.mean(jnp.abs(x[:, :, 1:, :] - x[:, :, :-1, :]))
  return vertical + horizontal


def gradient_distance(
  dummy: PyTree, observed: PyTree, distance: str
) -> jax.Array:
  """Distance between two gradient pytrees over all leaves together.

  "l2" is the squared L2 norm of the difference, and "cosine" is one minus
  the cosine similarity of the flattened gradients (0 for parallel gradients).
  """
  if distance == "l2":
    return otu.tree_sum(
      jax.tree.map(lambda a, b: jnp.sum((a - b) ** 2), dummy, observed)
    )
  dot = otu.tree_vdot(dummy, observed)
  norms = otu.tree_norm(dummy) * otu.tree_norm(observed)
  return 1.0 - dot / jnp.maximum(norms, 1e-12)


def _validate(
  num_examples, distance, optimizer, num_steps, num_restarts, labels
) -> None:
  if num_examples < 1:
    raise ValueError(
      f"num_examples={num_examples} must be at least 1; pass the batch size "
      "that produced the update."
    )
  if distance not in DISTANCES:
    raise ValueError(
      f"distance={distance!r} is unknown; use one of {DISTANCES}."
    )
  if optimizer not in OPTIMIZERS:
    raise ValueError(
      f"optimizer={optimizer!r} is unknown; use one of {OPTIMIZERS}."
    )
  if num_steps < 1 or num_restarts < 1:
    raise ValueError(
      f"num_steps={num_steps} and num_restarts={num_restarts} must both be "
      "at least 1."
    )
  if labels is not None and np.shape(labels) != (num_examples,):
    raise ValueError(
      f"labels have shape {np.shape(labels)}, expected ({num_examples},) "
      "for num_examples={num_examples}."
    )


def invert_update(
  model: Model,
  params: PyTree,
  update: PyTree,
  *,
  num_examples: int,
  feature_shape: Sequence[int],
  rng: jax.Array,
  labels: jax.Array | None = None,
  learning_rate: float | None = None,
  model_state: PyTree | None = None,
  distance: str = "cosine",
  optimizer: str = "adam",
  num_steps: int = 1000,
  step_size: float = 0.1,
  num_restarts: int = 4,
  tv_weight: float = 0.0,
  input_bounds: tuple[float, float] | None = None,
) -> InversionResult:
  """Reconstructs the records behind one client update by gradient matching.

  Args:
    model: The network the client trained.
    params: Global parameters at which the client computed its update.
    update: The observed update, shaped like `params`: a gradient of the
      batch-mean cross-entropy, or the delta `w_new - w` of one SGD step
      when `learning_rate` is given.
    num_examples: Batch size the attacker assumes.
    feature_shape: Shape of one record, without the batch axis.
    rng: Key for the random initial guesses.
    labels: Known labels `[num_examples]`, or None to recover them (iDLG
      for one example, soft labels for more).
    learning_rate: If given, `update` is a one-step SGD delta and the
      gradient is `-update / learning_rate`.
    model_state: Non-trainable collections of the model, if any.
    distance: "cosine" (Geiping et al.) or "l2" (DLG).
    optimizer: "adam" (with a cosine-decayed step size) or "lbfgs".
    num_steps: Optimizer steps per restart.
    step_size: Adam's initial step size. L-BFGS uses its line search.
    num_restarts: Random initial guesses optimized in parallel.
    tv_weight: Weight of a total-variation prior, for image inputs
      `[height, width, channels]` only.
    input_bounds: `(low, high)` box for the inputs, such as `(0, 1)` for
      pixels, or None.

  Returns:
    The reconstruction of the restart with the lowest final distance.

  Raises:
    ValueError: For an unknown distance or optimizer, non-positive sizes,
      labels of the wrong shape, or a total-variation prior on inputs that
      are not images.
  """
  _validate(num_examples, distance, optimizer, num_steps, num_restarts, labels)
  feature_shape = tuple(int(d) for d in feature_shape)
  if tv_weight and len(feature_shape) != 3:
    raise ValueError(
      f"tv_weight={tv_weight} needs image records [height, width, channels],"
      f" got feature_shape={feature_shape}; set tv_weight=0."
    )
  model_state = model_state or {}
  observed = update
  if learning_rate is not None:
    observed = otu.tree_scale(-1.0 / learning_rate, update)
  num_classes = max(model.num_outputs, 2)

  if labels is not None:
    fixed_probs = one_hot_labels(jnp.asarray(labels), model.num_outputs)
  elif num_examples == 1:
    bias_index = find_output_bias(model, params, feature_shape, model_state)
    label = recover_label(jax.tree.leaves(observed)[bias_index])
    fixed_probs = one_hot_labels(label[None], model.num_outputs)
  else:
    fixed_probs = None

  def objective(candidate):
    x, label_logits = candidate
    probs = fixed_probs
    if probs is None:
      probs = jax.nn.softmax(label_logits, axis=-1)
    dummy = batch_gradient(model, params, x, probs, model_state)
    value = gradient_distance(dummy, observed, distance)
    if tv_weight:
      value = value + tv_weight * total_variation(x)
    return value

  if optimizer == "adam":
    schedule = optax.cosine_decay_schedule(step_size, num_steps, alpha=0.01)
    transform = optax.adam(schedule)
  else:
    transform = optax.lbfgs()

  def project(candidate):
    if input_bounds is None or optimizer == "lbfgs":
      return candidate
    x, label_logits = candidate
    return jnp.clip(x, *input_bounds), label_logits

  def attack(key):
    x_key, label_key = jax.random.split(key)
    shape = (num_examples, *feature_shape)
    if input_bounds is None:
      x = jax.random.normal(x_key, shape)
    else:
      x = jax.random.uniform(
        x_key, shape, minval=input_bounds[0], maxval=input_bounds[1]
      )
    label_logits = 0.1 * jax.random.normal(
      label_key, (num_examples, num_classes)
    )
    candidate = (x, label_logits)
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry, _):
      candidate, opt_state = carry
      if optimizer == "lbfgs":
        value, grad = value_and_grad(candidate, state=opt_state)
        updates, opt_state = transform.update(
          grad,
          opt_state,
          candidate,
          value=value,
          grad=grad,
          value_fn=objective,
        )
      else:
        value, grad = jax.value_and_grad(objective)(candidate)
        updates, opt_state = transform.update(grad, opt_state, candidate)
      candidate = project(optax.apply_updates(candidate, updates))
      return (candidate, opt_state), value

    carry = (candidate, transform.init(candidate))
    (candidate, _), history = jax.lax.scan(step, carry, None, length=num_steps)
    return candidate, objective(candidate), history

  @jax.jit
  def run(key):
    keys = jax.random.split(key, num_restarts)
    candidates, final_losses, histories = jax.vmap(attack)(keys)
    # A restart that diverged to NaN must never win.
    final_losses = jnp.where(jnp.isnan(final_losses), jnp.inf, final_losses)
    best = jnp.argmin(final_losses)
    x, label_logits = jax.tree.map(lambda a: a[best], candidates)
    return x, label_logits, final_losses[best], histories[best]

  x, label_logits, matching_loss, history = run(rng)
  if input_bounds is not None:
    x = jnp.clip(x, *input_bounds)
  probs = fixed_probs
  if probs is None:
    probs = jax.nn.softmax(label_logits, axis=-1)
  return InversionResult(
    x=x,
    label_probs=probs,
    labels=jnp.argmax(probs, axis=-1).astype(jnp.int32),
    matching_loss=matching_loss,
    loss_history=history,
  )
