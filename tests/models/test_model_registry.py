"""Tests for building models by name with get_model."""

import jax
import jax.numpy as jnp
import pytest

from fedjax_med.models import MODEL_NAMES, get_model


def _param_shapes(model, feature_shape):
  x = jnp.ones((2, *feature_shape))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  return jax.tree.map(jnp.shape, variables["params"])


def test_model_names():
  assert MODEL_NAMES == ("logistic_regression", "mlp", "cnn", "minilm")


@pytest.mark.parametrize("num_classes,num_outputs", [(2, 1), (3, 3), (10, 10)])
def test_num_outputs_follow_num_classes(num_classes, num_outputs):
  model = get_model("mlp", num_classes=num_classes, feature_shape=(4,))
  assert model.num_outputs == num_outputs


def test_mlp_options_reach_module():
  model = get_model(
    "mlp",
    num_classes=2,
    feature_shape=(5,),
    hidden_sizes=[7, 3],
    use_batch_norm=True,
  )
  shapes = _param_shapes(model, (5,))

  assert shapes["Dense_0"]["kernel"] == (5, 7)
  assert shapes["Dense_1"]["kernel"] == (7, 3)
  assert shapes["Dense_2"]["kernel"] == (3, 1)
  assert shapes["BatchNorm_0"]["scale"] == (7,)


def test_mlp_default_hidden_sizes():
  shapes = _param_shapes(
    get_model("mlp", num_classes=2, feature_shape=(5,)), (5,)
  )
  assert shapes["Dense_0"]["kernel"] == (5, 64)
  assert shapes["Dense_1"]["kernel"] == (64, 64)


def test_cnn_options_reach_module():
  model = get_model(
    "cnn",
    num_classes=3,
    feature_shape=(6, 6, 2),
    channels=[4],
    kernel_size=[5, 5],
  )
  shapes = _param_shapes(model, (6, 6, 2))

  assert shapes["Conv2D_0"]["kernel"] == (5, 5, 2, 4)
  assert shapes["Dense_0"]["kernel"] == (3 * 3 * 4, 3)


def test_haiku_mlp_options_reach_module():
  model = get_model(
    "mlp", num_classes=4, feature_shape=(5,), library="haiku", hidden_sizes=[9]
  )
  shapes = _param_shapes(model, (5,))
  assert shapes["mlp/~/linear_0"]["w"] == (5, 9)
  assert shapes["mlp/~/linear_1"]["w"] == (9, 4)


@pytest.mark.parametrize(
  "kwargs,message",
  [
    (
      {"name": "resnet"},
      r"Unknown model 'resnet'; use one of \('logistic_regression', 'mlp', "
      r"'cnn', 'minilm'\)",
    ),
    ({"library": "jax"}, r"Unknown library 'jax'; use one of \('flax'"),
    (
      {"name": "cnn", "library": "haiku", "feature_shape": (8, 8, 1)},
      "'cnn' is not available with library='haiku'; use library='flax'",
    ),
    (
      {"name": "mlp", "dropout": 0.1},
      r"Unknown options \['dropout'\].*valid options: \['hidden_sizes', "
      r"'use_batch_norm'\]",
    ),
    (
      {"name": "logistic_regression", "hidden_sizes": (3,)},
      r"Unknown options \['hidden_sizes'\].*valid options: \[\]",
    ),
    (
      {"name": "mlp", "library": "haiku", "use_batch_norm": True},
      r"Unknown options \['use_batch_norm'\].*use library='flax'",
    ),
    (
      {"name": "cnn", "feature_shape": (64,)},
      r"feature_shape=\(64,\); load the images with as_images=True",
    ),
    (
      {"name": "cnn", "feature_shape": (8, 8, 1), "conv_impl": "fft"},
      r"conv_impl='fft' is not supported; use one of \('patches', 'lax'\)",
    ),
    ({"num_classes": 1}, "num_classes=1"),
  ],
)
def test_get_model_rejects_invalid_arguments(kwargs, message):
  arguments = {"name": "mlp", "num_classes": 2, "feature_shape": (4,)}
  arguments.update(kwargs)
  with pytest.raises(ValueError, match=message):
    get_model(**arguments)


def test_haiku_unknown_option_without_flax_hint():
  with pytest.raises(ValueError) as error:
    get_model(
      "mlp", num_classes=2, feature_shape=(4,), library="haiku", depth=3
    )
  assert "use library='flax'" not in str(error.value)
