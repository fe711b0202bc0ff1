"""Flax (default) and haiku models behind one init/apply contract."""

from fedjax_med.models.base import (
  Model,
  Variables,
  from_flax,
  from_haiku,
  num_outputs_for,
)
from fedjax_med.models.cnn import CNN
from fedjax_med.models.haiku_models import haiku_logistic_regression, haiku_mlp
from fedjax_med.models.layers import CONV_IMPLS, Conv2D, conv2d_patches
from fedjax_med.models.linear import LogisticRegression
from fedjax_med.models.mlp import MLP
from fedjax_med.models.registry import LIBRARIES, MODEL_NAMES, get_model

__all__ = [
  "CNN",
  "CONV_IMPLS",
  "LIBRARIES",
  "MLP",
  "MODEL_NAMES",
  "Conv2D",
  "LogisticRegression",
  "Model",
  "Variables",
  "conv2d_patches",
  "from_flax",
  "from_haiku",
  "get_model",
  "haiku_logistic_regression",
  "haiku_mlp",
  "num_outputs_for",
]
