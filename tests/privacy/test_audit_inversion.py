"""Gradient inversion against closed forms and under DP and secure sums."""

from __future__ import annotations

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med.core.client import ClientBatch, local_train
from fedjax_med.data import load_dataset
from fedjax_med.models import from_haiku, get_model
from fedjax_med.privacy.audit import analytic
from fedjax_med.privacy.audit import gradient_inversion as gi
from fedjax_med.privacy.audit.reconstruction import reconstruction_error
from fedjax_med.privacy.audit.server_view import observed_update

# Cosine distance is blind to the scale of the update, so clipping alone
# does not stop the attack.
FAST = dict(num_steps=1000, num_restarts=2, distance="cosine")


@functools.cache
def heart_records():
  data = load_dataset("fed_heart_disease")
  return data.train.client(0)


@functools.cache
def digits_records():
  data = load_dataset("digits", partition="iid", num_clients=4, seed=0)
  return data.train.client(0)


def logistic_setup():
  x, y = heart_records()
  model = get_model("logistic_regression", num_classes=2, feature_shape=(13,))
  params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
  return model, params, x, y


def first_row_with_label(y, label):
  return int(np.flatnonzero(y == label)[0])


@pytest.mark.parametrize("label", [0, 1])
def test_logistic_single_record_recovered(label):
  model, params, x, y = logistic_setup()
  row = first_row_with_label(y, label)
  record, record_label = x[row : row + 1], y[row : row + 1]
  gradient = gi.batch_gradient(
    model, params, record, gi.one_hot_labels(record_label, 1)
  )
  closed_form = analytic.analytic_dense_inversion(
    gradient["Dense_0"]["kernel"], gradient["Dense_0"]["bias"]
  )

  result = gi.invert_update(
    model,
    params,
    gradient,
    num_examples=1,
    feature_shape=(13,),
    rng=jax.random.PRNGKey(1),
    **FAST,
  )

  np.testing.assert_allclose(closed_form, record[0], atol=1e-5)
  np.testing.assert_allclose(result.x[0], closed_form, atol=1e-3)
  assert int(result.labels[0]) == label
  assert float(result.matching_loss) < 1e-5


def test_sgd_delta_inverted_with_learning_rate():
  model, params, x, y = logistic_setup()
  batch = ClientBatch(
    x=jnp.asarray(x[3:4]), y=jnp.asarray(y[3:4]), num_examples=jnp.asarray(1)
  )
  learning_rate = 0.05
  trained = local_train(
    model,
    {"params": params},
    batch,
    jax.random.PRNGKey(2),
    optimizer=optax.sgd(learning_rate),
    num_steps=1,
    batch_size=1,
  )
  delta = jax.tree.map(jnp.subtract, trained.params, params)

  result = gi.invert_update(
    model,
    params,
    delta,
    num_examples=1,
    feature_shape=(13,),
    rng=jax.random.PRNGKey(1),
    learning_rate=learning_rate,
    **FAST,
  )

  np.testing.assert_allclose(result.x[0], x[3], atol=1e-3)
  assert int(result.labels[0]) == int(y[3])


def test_dp_noise_raises_reconstruction_error():
  model, params, x, y = logistic_setup()
  batch = [(x[5:6], y[5:6])]
  errors = {}
  for noise_multiplier in (0.0, 2.0):
    update = observed_update(
      model,
      params,
      batch,
      mode="client",
      key=jax.random.PRNGKey(3),
      clip_norm=0.5,
      noise_multiplier=noise_multiplier,
    )
    result = gi.invert_update(
      model,
      params,
      update,
      num_examples=1,
      feature_shape=(13,),
      rng=jax.random.PRNGKey(1),
      **FAST,
    )
    errors[noise_multiplier] = reconstruction_error(
      np.asarray(result.x), x[5:6]
    )["mse"]

  # Clipping alone scales the weight and bias gradients alike, so the ratio
  # that identifies the record survives it.
  assert errors[0.0] < 1e-5
  assert errors[2.0] > 0.3
  assert errors[2.0] > 1e4 * errors[0.0]


def test_secure_sum_hides_single_records():
  model, params, x, y = logistic_setup()
  batches = [(x[k : k + 1], y[k : k + 1]) for k in range(4)]
  total = observed_update(
    model, params, batches, mode="none", key=jax.random.PRNGKey(0)
  )
  parts = [
    gi.batch_gradient(model, params, bx, gi.one_hot_labels(by, 1))
    for bx, by in batches
  ]
  expected = jax.tree.map(lambda *leaves: sum(leaves), *parts)
  for got, want in zip(
    jax.tree.leaves(total), jax.tree.leaves(expected), strict=True
  ):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)

  # A single record read off the sum is a mixture, far from each record.
  estimate = analytic.analytic_dense_inversion(
    total["Dense_0"]["kernel"], total["Dense_0"]["bias"]
  )
  per_record = np.mean((np.asarray(estimate) - x[:4]) ** 2, axis=1)
  assert np.min(per_record) > 0.1


def test_digits_image_recovered_from_mlp():
  x, y = digits_records()
  model = get_model(
    "mlp", num_classes=10, feature_shape=(8, 8, 1), hidden_sizes=(32,)
  )
  params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
  gradient = gi.batch_gradient(
    model, params, x[:1], gi.one_hot_labels(y[:1], 10)
  )

  result = gi.invert_update(
    model,
    params,
    gradient,
    num_examples=1,
    feature_shape=(8, 8, 1),
    rng=jax.random.PRNGKey(1),
    input_bounds=(0.0, 1.0),
    step_size=0.05,
    **FAST,
  )

  error = reconstruction_error(np.asarray(result.x), x[:1], data_range=1.0)
  assert error["psnr"] > 30.0
  assert int(result.labels[0]) == int(y[0])


def test_lbfgs_recovers_logistic_record():
  model, params, x, y = logistic_setup()
  gradient = gi.batch_gradient(
    model, params, x[:1], gi.one_hot_labels(y[:1], 1)
  )
  result = gi.invert_update(
    model,
    params,
    gradient,
    num_examples=1,
    feature_shape=(13,),
    rng=jax.random.PRNGKey(1),
    optimizer="lbfgs",
    distance="l2",
    num_steps=100,
    num_restarts=1,
  )
  np.testing.assert_allclose(result.x[0], x[0], atol=1e-3)


@pytest.mark.parametrize("num_classes", [2, 10])
def test_recover_label_matches_true_label(num_classes):
  x, y = digits_records()
  y = y % num_classes
  model = get_model(
    "mlp", num_classes=num_classes, feature_shape=(8, 8, 1), hidden_sizes=(16,)
  )
  params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
  index = analytic.find_output_bias(model, params, (8, 8, 1))
  for row in range(12):
    gradient = gi.batch_gradient(
      model,
      params,
      x[row : row + 1],
      gi.one_hot_labels(y[row : row + 1], model.num_outputs),
    )
    label = analytic.recover_label(jax.tree.leaves(gradient)[index])
    assert int(label) == int(y[row])


def test_find_output_bias_ignores_same_shape_leaves():
  # The hidden layer has as many units as there are classes, so the output
  # bias has the same shape as the hidden bias.
  model = get_model(
    "mlp", num_classes=10, feature_shape=(8, 8, 1), hidden_sizes=(10,)
  )
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  index = analytic.find_output_bias(model, params["params"], (8, 8, 1))
  paths = [
    jax.tree_util.keystr(path)
    for path, _ in jax.tree_util.tree_flatten_with_path(params["params"])[0]
  ]
  assert paths[index] == "['Dense_1']['bias']"


def test_find_output_bias_on_haiku_model():
  def forward(x, train):
    del train
    hidden = jax.nn.relu(hk.Linear(10, name="hidden")(x))
    return hk.Linear(10, name="head")(hidden)

  model = from_haiku(hk.transform_with_state(forward), num_outputs=10)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5)))["params"]
  index = analytic.find_output_bias(model, params, (5,))
  paths = [
    jax.tree_util.keystr(path)
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
  ]
  assert paths[index] == "['head']['b']"


def test_soft_cross_entropy_matches_project_loss():
  from fedjax_med import losses

  logits = jax.random.normal(jax.random.PRNGKey(0), (6, 1))
  labels = jnp.asarray([0, 1, 1, 0, 1, 0])
  np.testing.assert_allclose(
    gi.soft_cross_entropy(logits, gi.one_hot_labels(labels, 1)),
    losses.cross_entropy(logits, labels),
    rtol=1e-6,
  )


@pytest.mark.parametrize(
  "options, message",
  [
    ({"distance": "l1"}, "distance='l1'"),
    ({"optimizer": "sgd"}, "optimizer='sgd'"),
    ({"num_examples": 0}, "num_examples=0"),
    ({"labels": jnp.zeros((3,), jnp.int32)}, "labels have shape"),
    ({"tv_weight": 0.1}, "tv_weight=0.1"),
  ],
)
def test_invert_update_rejects_invalid_settings(options, message):
  model, params, _, _ = logistic_setup()
  arguments = dict(
    num_examples=1, feature_shape=(13,), rng=jax.random.PRNGKey(0)
  )
  arguments.update(options)
  with pytest.raises(ValueError, match=message.replace("[", r"\[")):
    gi.invert_update(model, params, params, **arguments)
