"""The asymmetric loss with Padé approximation (ALPA).

Reference: P. Kashyap, P. Tandon, S. Gupta, A. Tiwari, R. Kulkarni,
K. S. Jadhav, "Taming the Tail: Leveraging Asymmetric Loss and Pade
Approximation to Overcome Medical Image Long-Tailed Class Imbalance",
BMVC 2024, arXiv:2410.04084.

The formula is reconstructed from the authors' released PyTorch code
(github.com/ipankhi/ALPA, `models/get_optimizer.py` and the defaults in
`utils/config.py`), not from the paper's text. Every class has its own
sigmoid and the target is the one-hot label `y`:

    p      = sigmoid(z)
    q      = min(1, (1 - p) + m)                 clipped negative probability
    L+(p)  = (a0 + a1 p) / (1 + b1 p)            Padé [1/1] positive part
    L-(q)  = (c0 + c1 q) / (1 + d1 q)            Padé [1/1] negative part
    e      = alpha y q^gamma_pos L+(p) + beta (1 - y) p^gamma_neg L-(q)
    p_t    = p y + q (1 - y)
    w      = (1 - p_t)^(gamma_pos y + gamma_neg (1 - y))
    loss   = -sum over classes of e * w

Defaults are the released code's: a0 = -3/2, a1 = 3/2, b1 = 0, c0 = -1,
c1 = 1, d1 = 0 (both parts linear: L+(p) = -1.5 (1 - p) and
L-(q) = -(1 - q)), gamma_neg = 4, gamma_pos = 0, m = 0.05, alpha = 0.875,
beta = 1.625. The negative part is focused twice, by `p^gamma_neg` and by
`w`, as in the code.

Choices and departures:
  * The code sums over the batch. Here the loss is per example (summed over
    classes), and local training averages it over the batch, which divides
    the effective learning rate by the batch size relative to the code.
  * A binary task with one logit is one sigmoid with `y` the label; a task
    with `C > 2` classes uses `C` sigmoids on one-hot labels. Evaluation
    still reads softmax probabilities from multiclass logits, which keeps
    the predicted class (the arg max) unchanged.
  * Whether the focusing weight `w` is differentiated depends, in the
    released class, on an attribute that its constructor never sets. Here
    it is differentiated by default, and `focusing_gradient=False` stops
    its gradient.
  * With `gamma_pos = gamma_neg = 0`, `m = 0`, `alpha = beta = 1` and the
    [1/1] Padé coefficients of `log x` at `x = 1` (`a0 = c0 = -2`,
    `a1 = c1 = 2`, `b1 = d1 = 1`), the loss is a rational approximation of
    the per-class sigmoid cross-entropy that differs from it by
    `O((1 - p_t)^3)`. With the released coefficients, `L-(q)` matches
    `log q` to first order in `1 - q`, and `L+(p)` is 1.5 times the first
    order term of `log p`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedjax_med.losses.long_tail import LossFn


class PadeCoefficients(NamedTuple):
  """Coefficients of the two [1/1] Padé parts.

  Attributes:
    a0, a1, b1: `L+(p) = (a0 + a1 p) / (1 + b1 p)`.
    c0, c1, d1: `L-(q) = (c0 + c1 q) / (1 + d1 q)`.
  """

  a0: float = -1.5
  a1: float = 1.5
  b1: float = 0.0
  c0: float = -1.0
  c1: float = 1.0
  d1: float = 0.0


# The coefficients of the released code.
RELEASED_PADE = PadeCoefficients()
# The [1/1] Padé approximant of log(x) at x = 1 is 2 (x - 1) / (x + 1).
LOG_PADE = PadeCoefficients(a0=-2.0, a1=2.0, b1=1.0, c0=-2.0, c1=2.0, d1=1.0)


def _power(base: jax.Array, exponent) -> jax.Array:
  """`base ** exponent` for `base >= 0`, with `x ** 0 = 1` and no NaN grad.

  `jnp.power` has a NaN gradient at `base = 0` when the exponent is 0. Here
  the gradient at `base = 0` is 0, which is exact for exponents other than
  0 < exponent <= 1.
  """
  positive = base > 0
  safe = jnp.where(positive, base, 1.0)
  value = jnp.where(positive, safe**exponent, 0.0)
  return jnp.where(exponent == 0, 1.0, value)


def alpa_loss(
  gamma_neg: float = 4.0,
  gamma_pos: float = 0.0,
  clip: float = 0.05,
  alpha: float = 0.875,
  beta: float = 1.625,
  pade: PadeCoefficients = RELEASED_PADE,
  focusing_gradient: bool = True,
) -> LossFn:
  """Builds the ALPA per-example loss (see the module docstring).

  Args:
    gamma_neg: Focusing exponent of the negative classes.
    gamma_pos: Focusing exponent of the positive class.
    clip: Probability margin `m` added to `1 - p` before clipping at 1;
      0 disables clipping.
    alpha: Weight of the positive part.
    beta: Weight of the negative part.
    pade: Coefficients of the two Padé parts.
    focusing_gradient: Whether gradients flow through the focusing weight.

  Returns:
    `loss(logits [batch, outputs], labels [batch]) -> [batch]`.

  Raises:
    ValueError: For a negative exponent or clip outside [0, 1).
  """
  if gamma_neg < 0 or gamma_pos < 0:
    raise ValueError(
      f"alpa gamma_neg={gamma_neg} and gamma_pos={gamma_pos} must be >= 0."
    )
  if not 0.0 <= clip < 1.0:
    raise ValueError(f"alpa clip={clip} must lie in [0, 1); 0.05 is default.")
  coefficients = PadeCoefficients(*(float(c) for c in pade))

  def loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    if logits.shape[-1] == 1:
      targets = labels.astype(logits.dtype)[..., None]
    else:
      targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    p = jax.nn.sigmoid(logits)
    q = 1.0 - p
    if clip > 0:
      q = jnp.minimum(q + clip, 1.0)

    a0, a1, b1, c0, c1, d1 = coefficients
    positive = (a0 + a1 * p) / (1.0 + b1 * p)
    negative = (c0 + c1 * q) / (1.0 + d1 * q)
    elementwise = alpha * targets * _power(q, gamma_pos) * positive
    elementwise += beta * (1.0 - targets) * _power(p, gamma_neg) * negative

    if gamma_neg > 0 or gamma_pos > 0:
      p_t = p * targets + q * (1.0 - targets)
      exponent = gamma_pos * targets + gamma_neg * (1.0 - targets)
      weight = _power(1.0 - p_t, exponent)
      if not focusing_gradient:
        weight = jax.lax.stop_gradient(weight)
      elementwise = elementwise * weight
    return -jnp.sum(elementwise, axis=-1)

  return loss
