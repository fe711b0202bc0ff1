"""Long-tail losses against hand values, cross-entropy limits and edges."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med import losses
from fedjax_med.losses import asymmetric_pade

RNG = np.random.default_rng(0)
MULTI_LOGITS = jnp.asarray(RNG.normal(size=(6, 4)) * 2, jnp.float32)
MULTI_LABELS = jnp.asarray([0, 1, 2, 3, 3, 1])
BINARY_LOGITS = jnp.asarray(RNG.normal(size=(6, 1)) * 2, jnp.float32)
BINARY_LABELS = jnp.asarray([0, 1, 1, 0, 1, 0])


def _values_and_gradients(loss_fn, logits, labels):
  """Returns the losses and the gradient of their sum, in one compiled call."""

  def total(z):
    values = loss_fn(z, labels)
    return values.sum(), values

  (_, values), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(logits)
  return values, grads


def _close(a, b, rtol=1e-5, atol=1e-6):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol, atol)


def test_focal_hand_values_multiclass():
  logits = jnp.log(jnp.asarray([[1.0, 3.0]] * 2 + [[1.0, 1.0]]))
  logits = jnp.concatenate([logits, jnp.zeros((3, 1)) - 1e9], axis=1)
  loss = losses.focal_loss(gamma=2.0)(logits, jnp.asarray([1, 0, 0]))
  expected = [
    0.25**2 * -math.log(0.75),
    0.75**2 * -math.log(0.25),
    0.5**2 * -math.log(0.5),
  ]
  _close(loss, expected)


def test_focal_hand_values_binary():
  logits = jnp.asarray([[0.0], [math.log(3.0)]])
  labels = jnp.asarray([1, 0])
  plain = losses.focal_loss(gamma=2.0)(logits, labels)
  _close(plain, [0.25 * math.log(2.0), 0.75**2 * -math.log(0.25)])
  weighted = losses.focal_loss(gamma=2.0, alpha=0.25)(logits, labels)
  _close(weighted, [0.25 * plain[0], 0.75 * plain[1]])


def test_class_balanced_weights_hand_values():
  weights = losses.class_balanced_weights([1, 3], beta=0.5)
  # Effective numbers 1 and (1 - 0.125) / 0.5 = 1.75.
  _close(weights, [14 / 11, 8 / 11])


def test_class_balanced_loss_scales_cross_entropy():
  counts = [10, 5, 2, 1]
  loss = losses.class_balanced_loss(counts, beta=0.9)(
    MULTI_LOGITS, MULTI_LABELS
  )
  weights = losses.class_balanced_weights(counts, 0.9)
  ce = losses.cross_entropy(MULTI_LOGITS, MULTI_LABELS)
  _close(loss, weights[np.asarray(MULTI_LABELS)] * ce)
  assert weights[3] > weights[0]


def test_balanced_softmax_hand_values():
  multi = losses.balanced_softmax_loss([1, 1, 2])(
    jnp.zeros((1, 3)), jnp.asarray([0])
  )
  _close(multi, [math.log(4.0)])
  binary = losses.balanced_softmax_loss([1, 3])(
    jnp.zeros((1, 1)), jnp.asarray([1])
  )
  _close(binary, [-math.log(0.75)])


def test_logit_adjustment_hand_value():
  loss = losses.logit_adjusted_loss([1, 1, 4], tau=0.5)(
    jnp.zeros((1, 3)), jnp.asarray([2])
  )
  # Adjusted logits 0.5 * log(prior) are [0, 0, log 2] plus a constant.
  _close(loss, [math.log(2.0)])


def _alpa_binary_hand_values():
  # Defaults: p = 0.5, q = min(1, 0.5 + 0.05) = 0.55.
  positive = 0.875 * (-1.5 * 0.5)
  negative = 1.625 * 0.5**4 * (-(1 - 0.55)) * 0.45**4
  return -positive, -negative


def test_alpa_hand_values_binary():
  loss = losses.alpa_loss()(jnp.zeros((2, 1)), jnp.asarray([1, 0]))
  _close(loss, _alpa_binary_hand_values())


def test_alpa_hand_values_multiclass():
  loss = losses.alpa_loss()(jnp.zeros((1, 3)), jnp.asarray([1]))
  positive, negative = _alpa_binary_hand_values()
  _close(loss, [positive + 2 * negative])


def test_alpa_hand_value_with_clipped_negative():
  # p = sigmoid(-3) < m: the clipped q is 1, so a negative costs nothing.
  loss = losses.alpa_loss()(jnp.asarray([[-3.0]]), jnp.asarray([0]))
  _close(loss, [0.0])


@pytest.mark.parametrize(
  "loss_fn",
  [
    losses.focal_loss(gamma=0.0),
    losses.class_balanced_loss([5, 1, 2, 9], beta=0.0),
    losses.balanced_softmax_loss([3, 3, 3, 3]),
    losses.logit_adjusted_loss([7, 1, 2, 30], tau=0.0),
    losses.logit_adjusted_loss([4, 4, 4, 4], tau=2.0),
  ],
  ids=["focal", "class_balanced", "balanced_softmax", "la_tau0", "la_uniform"],
)
def test_loss_reduces_to_cross_entropy(loss_fn):
  _close(
    loss_fn(MULTI_LOGITS, MULTI_LABELS),
    losses.cross_entropy(MULTI_LOGITS, MULTI_LABELS),
  )


@pytest.mark.parametrize(
  "loss_fn",
  [
    losses.focal_loss(gamma=0.0),
    losses.class_balanced_loss([5, 1], beta=0.0),
    losses.balanced_softmax_loss([3, 3]),
    losses.logit_adjusted_loss([7, 1], tau=0.0),
    losses.logit_adjusted_loss([4, 4], tau=2.0),
  ],
  ids=["focal", "class_balanced", "balanced_softmax", "la_tau0", "la_uniform"],
)
def test_binary_loss_reduces_to_cross_entropy(loss_fn):
  expected = optax.sigmoid_binary_cross_entropy(
    BINARY_LOGITS[:, 0], BINARY_LABELS.astype(jnp.float32)
  )
  _close(loss_fn(BINARY_LOGITS, BINARY_LABELS), expected)


def test_logit_adjustment_tau_one_is_balanced_softmax():
  counts = [50, 20, 5, 1]
  _close(
    losses.logit_adjusted_loss(counts, tau=1.0)(MULTI_LOGITS, MULTI_LABELS),
    losses.balanced_softmax_loss(counts)(MULTI_LOGITS, MULTI_LABELS),
  )


def test_balanced_softmax_binary_matches_two_logits():
  counts = [8, 2]
  one_logit = losses.balanced_softmax_loss(counts)(BINARY_LOGITS, BINARY_LABELS)
  # Two logits [0, z] give the same softmax as one log-odds z.
  two = jnp.concatenate([jnp.zeros_like(BINARY_LOGITS), BINARY_LOGITS], 1)
  adjusted = two + jnp.log(jnp.asarray(counts, jnp.float32))
  expected = optax.softmax_cross_entropy_with_integer_labels(
    adjusted, BINARY_LABELS
  )
  _close(one_logit, expected)


def test_alpa_with_log_pade_approximates_cross_entropy():
  # Sigmoid cross-entropy per class, summed, on confident correct logits.
  logits = jnp.asarray([[4.0, -4.5, -5.0], [-3.5, 6.0, -4.0]])
  labels = jnp.asarray([0, 1])
  targets = jax.nn.one_hot(labels, 3)
  bce = optax.sigmoid_binary_cross_entropy(logits, targets).sum(-1)
  alpa = losses.alpa_loss(
    gamma_neg=0.0,
    gamma_pos=0.0,
    clip=0.0,
    alpha=1.0,
    beta=1.0,
    pade=asymmetric_pade.LOG_PADE,
  )(logits, labels)
  p_t = jnp.where(targets == 1, jax.nn.sigmoid(logits), jax.nn.sigmoid(-logits))
  bound = jnp.sum((1 - p_t) ** 3, axis=-1) / 12 * 1.2
  gap = jnp.abs(alpa - bce)
  assert np.all(np.asarray(gap) <= np.asarray(bound))
  assert np.all(np.asarray(gap) > 0)


def test_alpa_default_is_not_cross_entropy():
  gap = losses.alpa_loss()(MULTI_LOGITS, MULTI_LABELS) - losses.cross_entropy(
    MULTI_LOGITS, MULTI_LABELS
  )
  assert np.max(np.abs(np.asarray(gap))) > 0.1


def test_alpa_stopped_focusing_changes_gradient_only():
  loss_a = losses.alpa_loss()
  loss_b = losses.alpa_loss(focusing_gradient=False)
  _close(loss_a(MULTI_LOGITS, MULTI_LABELS), loss_b(MULTI_LOGITS, MULTI_LABELS))
  _, grad_a = _values_and_gradients(loss_a, MULTI_LOGITS, MULTI_LABELS)
  _, grad_b = _values_and_gradients(loss_b, MULTI_LOGITS, MULTI_LABELS)
  assert not np.allclose(np.asarray(grad_a), np.asarray(grad_b))


EDGE_MULTI = jnp.asarray(
  [[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [40.0, -40.0, -40.0], [0.0, 0.0, 0.0]],
  jnp.float32,
)
EDGE_BINARY = jnp.asarray([[1e4], [-1e4], [40.0], [-40.0]], jnp.float32)


@pytest.mark.parametrize("binary", [False, True], ids=["multiclass", "binary"])
@pytest.mark.parametrize(
  "name,options",
  [
    ("cross_entropy", {}),
    ("focal", {"gamma": 2.0}),
    ("focal", {"gamma": 0.0}),
    ("focal", {"gamma": 0.5}),
    ("class_balanced", {"beta": 0.999}),
    ("class_balanced", {"beta": 0.99, "base": "focal"}),
    ("balanced_softmax", {}),
    ("logit_adjustment", {"tau": 1.5}),
    ("alpa", {}),
    ("alpa", {"gamma_pos": 1.0, "clip": 0.0}),
  ],
)
def test_gradients_finite_at_edges(name, options, binary):
  if binary:
    logits, counts = EDGE_BINARY, [1000, 0]
    labels = jnp.asarray([0, 1, 1, 0])
  else:
    logits, counts = EDGE_MULTI, [1000, 10, 0]
    labels = jnp.asarray([1, 0, 0, 2])
  loss_fn = losses.make_loss(name, counts, **options)
  values, grads = _values_and_gradients(loss_fn, logits, labels)
  assert np.all(np.isfinite(np.asarray(values)))
  assert np.all(np.isfinite(np.asarray(grads)))


@pytest.mark.parametrize(
  "name", ["focal", "class_balanced", "logit_adjustment", "alpa"]
)
def test_gradients_finite_at_correct_saturation(name):
  # Confident and correct: p_t is 1 in float32, where (1 - p_t)^0 and
  # log(1 - p_t) have NaN gradients if written naively.
  logits = jnp.asarray([[30.0, -30.0, -30.0]])
  options = {"gamma": 0.0} if name == "focal" else {}
  loss_fn = losses.make_loss(name, [3, 2, 1], **options)
  _, grads = _values_and_gradients(loss_fn, logits, jnp.asarray([0]))
  assert np.all(np.isfinite(np.asarray(grads)))


def test_make_loss_rejects_unknown_name():
  with pytest.raises(ValueError, match="unknown"):
    losses.make_loss("softmax_focal")


def test_make_loss_rejects_unknown_option():
  with pytest.raises(ValueError, match=r"\['beta'\]"):
    losses.make_loss("focal", beta=0.9)


def test_make_loss_requires_counts():
  with pytest.raises(ValueError, match="class_counts"):
    losses.make_loss("balanced_softmax")


def test_make_loss_passes_pade_coefficients():
  loss_fn = losses.make_loss(
    "alpa", a0=-2.0, a1=2.0, b1=1.0, gamma_neg=0.0, clip=0.0
  )
  value = loss_fn(jnp.zeros((1, 1)), jnp.asarray([1]))
  # p = 1/2: L+(p) = (-2 + 1) / 1.5, times alpha = 0.875.
  _close(value, [0.875 * 2 / 3])


def test_loss_rejects_wrong_number_of_classes():
  loss_fn = losses.balanced_softmax_loss([1, 2, 3])
  with pytest.raises(ValueError, match="3 classes"):
    loss_fn(MULTI_LOGITS, MULTI_LABELS)
