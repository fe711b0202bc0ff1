"""Losses for long-tailed labels: focal, class-balanced, logit-adjusted.

Each factory returns a per-example loss `(logits, labels) -> [batch]` with
the signature of `cross_entropy`, so any algorithm takes it as its
`loss_fn`. Binary tasks carry one logit (the log-odds of class 1) and the
losses use the sigmoid; tasks with more classes carry one logit per class and
use the softmax.

The factories that need class frequencies take `class_counts`, the training
examples per class. `fedjax_med.algorithms.registry` passes the global counts
(the sum of the clients' label histograms, see
`fedjax_med.losses.class_statistics`). A class with no training example is
counted as one, so that its weight and prior stay finite.

References:
  * Focal loss: T.-Y. Lin, P. Goyal, R. Girshick, K. He, P. Dollár, "Focal
    Loss for Dense Object Detection", ICCV 2017, arXiv:1708.02002.
  * Class-balanced loss: Y. Cui, M. Jia, T.-Y. Lin, Y. Song, S. Belongie,
    "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019,
    arXiv:1901.05555.
  * Balanced softmax: J. Ren, C. Yu, S. Sheng, R. Ma, H. Zhao, S. Yi, H. Li,
    "Balanced Meta-Softmax for Long-Tailed Visual Recognition", NeurIPS 2020,
    arXiv:2007.10740.
  * Logit adjustment: A. K. Menon, S. Jayasumana, A. S. Rawat, H. Jain,
    A. Veit, S. Kumar, "Long-tail learning via logit adjustment", ICLR 2021,
    arXiv:2007.07314 (the logit-adjusted loss, not post-hoc adjustment).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med.losses.classification import cross_entropy

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def checked_counts(class_counts, name: str) -> np.ndarray:
  """Returns counts as float64 with zeros raised to one.

  Raises:
    ValueError: If the counts are not a 1-D array of at least two
      non-negative numbers.
  """
  counts = np.asarray(class_counts, np.float64)
  if counts.ndim != 1 or counts.size < 2:
    raise ValueError(
      f"{name} needs class_counts with one entry per class (at least two), "
      f"got shape {counts.shape}."
    )
  if not np.all(np.isfinite(counts)) or np.any(counts < 0):
    raise ValueError(
      f"class_counts {counts.tolist()} for {name} must be finite and "
      "non-negative."
    )
  return np.maximum(counts, 1.0)


def _log_probabilities(logits: jax.Array, labels: jax.Array):
  """Returns `(log p_y, log (1 - p_y))` per example, stable for large logits.

  Binary tasks: `p_1 = sigmoid(z)`, so `log p_y = -softplus(-z_y)` and
  `log(1 - p_y) = -softplus(z_y)` with `z_y = z` for label 1 and `-z` for
  label 0. Multiclass: `log(1 - p_y)` is the log-sum-exp of the other logits
  minus that of all logits, which stays finite where `1 - p_y` underflows.
  """
  if logits.shape[-1] == 1:
    signed = jnp.where(labels == 1, logits[..., 0], -logits[..., 0])
    return -jax.nn.softplus(-signed), -jax.nn.softplus(signed)
  one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
  total = jax.nn.logsumexp(logits, axis=-1)
  log_p = jnp.sum(jnp.where(one_hot, logits, 0.0), axis=-1) - total
  others = jax.nn.logsumexp(jnp.where(one_hot, -jnp.inf, logits), axis=-1)
  return log_p, others - total


def focal_loss(gamma: float = 2.0, alpha: float | None = None) -> LossFn:
  """Builds the focal loss `-alpha_t (1 - p_t)^gamma log p_t`.

  `p_t` is the probability of the true class. `gamma = 0` without `alpha`
  is cross-entropy. `alpha` (binary tasks only) weights class 1 by `alpha`
  and class 0 by `1 - alpha`, and None leaves the classes unweighted. Lin et
  al. report gamma 2 with alpha 0.25 as the best detector setting.

  Raises:
    ValueError: If gamma is negative or alpha is outside [0, 1].
  """
  if not gamma >= 0:
    raise ValueError(f"focal gamma={gamma} must be >= 0; 2.0 is the default.")
  if alpha is not None and not 0.0 <= alpha <= 1.0:
    raise ValueError(f"focal alpha={alpha} must lie in [0, 1], or be None.")

  def loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    if alpha is not None and logits.shape[-1] != 1:
      raise ValueError(
        f"focal alpha={alpha} is defined for binary tasks (one logit) only; "
        f"these logits have {logits.shape[-1]} classes. Use "
        "class_balanced with base='focal' for per-class weights."
      )
    log_p, log_1mp = _log_probabilities(logits, labels)
    # (1 - p_t)^gamma written as exp(gamma * log(1 - p_t)) keeps the
    # gradient finite at p_t = 1 for every gamma >= 0.
    values = -jnp.exp(gamma * log_1mp) * log_p
    if alpha is not None:
      values = values * jnp.where(labels == 1, alpha, 1.0 - alpha)
    return values

  return loss


def class_balanced_weights(class_counts, beta: float) -> np.ndarray:
  """Returns `(1 - beta) / (1 - beta^n_c)`, normalized to sum to `C`.

  `beta = 0` gives every class weight 1. As `beta` approaches 1 the weights
  approach inverse class frequency.
  """
  counts = checked_counts(class_counts, "class_balanced")
  if not 0.0 <= beta < 1.0:
    raise ValueError(
      f"class_balanced beta={beta} must lie in [0, 1); the paper uses 0.9 "
      "to 0.9999."
    )
  effective_number = (1.0 - beta**counts) / (1.0 - beta)
  weights = 1.0 / effective_number
  return weights * counts.size / weights.sum()


def class_balanced_loss(
  class_counts, beta: float = 0.999, base: str = "softmax", gamma: float = 2.0
) -> LossFn:
  """Builds the class-balanced loss: a base loss weighted by the true class.

  The weight of class `c` is the inverse of its effective number of
  examples `(1 - beta^n_c) / (1 - beta)`, scaled so the weights sum to the
  number of classes. With `beta = 0` every weight is 1 and the loss is its
  base.

  Args:
    class_counts: `[num_classes]` training examples per class.
    beta: In [0, 1); 0.999 by default.
    base: "softmax" for cross-entropy (sigmoid cross-entropy on binary
      tasks) or "focal" for the focal loss with `gamma`.
    gamma: Focusing parameter of the focal base.

  Raises:
    ValueError: For invalid counts, beta or base.
  """
  weights = jnp.asarray(class_balanced_weights(class_counts, beta), jnp.float32)
  if base == "softmax":
    base_loss = cross_entropy
  elif base == "focal":
    base_loss = focal_loss(gamma)
  else:
    raise ValueError(
      f"class_balanced base={base!r} is unknown; use 'softmax' or 'focal'."
    )

  def loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    _check_num_classes(logits, weights.shape[0], "class_balanced")
    return weights[labels] * base_loss(logits, labels)

  return loss


def logit_adjusted_loss(class_counts, tau: float = 1.0) -> LossFn:
  """Builds the logit-adjusted loss: cross-entropy on `z + tau * log(pi)`.

  `pi` is the class prior `n_c / N`. For a binary task the single logit is
  shifted by `tau * log(pi_1 / pi_0)`, which is the same adjustment written
  for the log-odds. `tau = 0`, or uniform priors, gives cross-entropy; the
  paper's default is `tau = 1`, which equals the balanced softmax.

  Raises:
    ValueError: For invalid counts or a negative tau.
  """
  counts = checked_counts(class_counts, "logit_adjustment")
  if not tau >= 0:
    raise ValueError(f"logit_adjustment tau={tau} must be >= 0.")
  log_prior = np.log(counts / counts.sum())
  num_classes = counts.size
  if num_classes == 2:
    # One logit for two classes: shift the log-odds instead.
    offset = jnp.asarray([tau * (log_prior[1] - log_prior[0])], jnp.float32)
  else:
    offset = jnp.asarray(tau * log_prior, jnp.float32)

  def loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    _check_num_classes(logits, num_classes, "logit_adjustment")
    return cross_entropy(logits + offset, labels)

  return loss


def balanced_softmax_loss(class_counts) -> LossFn:
  """Builds the balanced softmax: cross-entropy on `z + log(n_c)`.

  Adding `log n_c` or `log pi_c` differs by a constant per example, which
  the softmax ignores, so this is `logit_adjusted_loss` with `tau = 1`.
  """
  return logit_adjusted_loss(class_counts, tau=1.0)


def _check_num_classes(logits: jax.Array, num_classes: int, name: str) -> None:
  expected = 1 if num_classes == 2 else num_classes
  if logits.shape[-1] != expected:
    raise ValueError(
      f"{name} was built for {num_classes} classes ({expected} logits), but "
      f"the model outputs {logits.shape[-1]} logits; pass the class counts "
      "of this task."
    )
