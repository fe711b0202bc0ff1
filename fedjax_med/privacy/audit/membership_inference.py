"""Loss-threshold membership inference.

Reference: S. Yeom, I. Giacomelli, M. Fredrikson, S. Jha, "Privacy Risk in
Machine Learning: Analyzing the Connection to Overfitting", CSF 2018,
arXiv:1709.01604.

The attacker guesses that a record was in the training set when the model's
loss on it is below a threshold. Scoring every record by its negated loss
gives a ROC curve over all thresholds. This module reports:

  * "auc": the area under that curve (`sklearn.metrics.roc_auc_score`, with
    members as the positive class). 0.5 is chance.
  * "advantage": `max_t (TPR - FPR)` over all thresholds, the best
    membership advantage (Yeom et al.'s `Adv = TPR - FPR`) that any loss
    threshold reaches on these records. Because the threshold is chosen
    with the labels, it is an optimistic estimate of the attack.
  * "mean_loss_advantage": TPR - FPR at the threshold of Yeom et al.'s
    attack, the mean member loss (the expected training loss, which the
    attacker is assumed to know).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from sklearn import metrics

from fedjax_med import losses
from fedjax_med.models.base import Model

PyTree = Any


def example_losses(
  model: Model,
  variables: PyTree,
  x: np.ndarray,
  y: np.ndarray,
  loss_fn: Callable[[jax.Array, jax.Array], jax.Array] = losses.cross_entropy,
  batch_size: int = 1024,
) -> np.ndarray:
  """Returns the model's loss on every record, in batches.

  Args:
    model: The network.
    variables: Its variables, `{"params": ..., **model_state}`.
    x: Records `[num_examples, *feature_shape]`.
    y: Integer labels `[num_examples]`.
    loss_fn: Per-example loss `(logits, labels) -> [batch]`.
    batch_size: Records per forward pass.

  Returns:
    Float64 losses, `[num_examples]`.
  """

  @jax.jit
  def batch_losses(x_batch, y_batch):
    logits, _ = model.apply(variables, x_batch, train=False)
    return loss_fn(logits, y_batch)

  parts = [
    np.asarray(
      batch_losses(
        jnp.asarray(x[start : start + batch_size]),
        jnp.asarray(y[start : start + batch_size]),
      )
    )
    for start in range(0, len(y), batch_size)
  ]
  if not parts:
    return np.zeros((0,), np.float64)
  return np.concatenate(parts).astype(np.float64)


def _check_losses(values: np.ndarray, name: str) -> np.ndarray:
  values = np.asarray(values, np.float64).reshape(-1)
  if values.size == 0:
    raise ValueError(
      f"{name} is empty; the attack needs at least one loss of each kind."
    )
  if not np.all(np.isfinite(values)):
    bad = int(np.sum(~np.isfinite(values)))
    raise ValueError(
      f"{name} contains {bad} NaN or infinite losses; check the model's "
      "outputs before scoring membership."
    )
  return values


def membership_inference_auc(
  losses_members: np.ndarray, losses_nonmembers: np.ndarray
) -> dict[str, Any]:
  """Scores a loss-threshold membership attack.

  Args:
    losses_members: Losses on training records, `[num_members]`.
    losses_nonmembers: Losses on held-out records, `[num_nonmembers]`.

  Returns:
    A dict with "auc", "advantage", "threshold" (the loss threshold that
    reaches "advantage"), "mean_loss_advantage", "num_members",
    "num_nonmembers", and the ROC curve as lists "fpr" and "tpr".

  Raises:
    ValueError: If either array is empty or contains a NaN or infinite loss.
  """
  members = _check_losses(losses_members, "losses_members")
  nonmembers = _check_losses(losses_nonmembers, "losses_nonmembers")
  is_member = np.concatenate(
    [np.ones(members.size, bool), np.zeros(nonmembers.size, bool)]
  )
  score = -np.concatenate([members, nonmembers])

  auc = metrics.roc_auc_score(is_member, score)
  fpr, tpr, thresholds = metrics.roc_curve(is_member, score)
  best = int(np.argmax(tpr - fpr))

  # Yeom et al.'s attack: guess "member" when the loss is at most the mean
  # training loss.
  mean_loss = float(np.mean(members))
  mean_loss_advantage = float(
    np.mean(members <= mean_loss) - np.mean(nonmembers <= mean_loss)
  )
  return {
    "auc": float(auc),
    "advantage": float(tpr[best] - fpr[best]),
    "threshold": float(-thresholds[best]),
    "mean_loss_advantage": mean_loss_advantage,
    "num_members": int(members.size),
    "num_nonmembers": int(nonmembers.size),
    "fpr": fpr.tolist(),
    "tpr": tpr.tolist(),
  }
