"""Builds zoo models by name, for configs and scripts.

  model = get_model("mlp", num_classes=2, feature_shape=(13,),
                    hidden_sizes=(32,))

Options per model and library:

  name                 flax options                          haiku options
  logistic_regression  (none)                                (none)
  mlp                  hidden_sizes, use_batch_norm          hidden_sizes
  cnn                  channels, kernel_size, conv_impl,     (not available)
                       use_batch_norm
  minilm               peft, lora_rank, lora_alpha,          (not available)
                       lora_targets, num_prompts, scl_rank,
                       scl_train_down_projection, num_layers

"minilm" is the pretrained all-MiniLM-L6-v2 encoder with a dense head
(`fedjax_med.models.text`), on token features of shape `(2, seq_len)`;
`peft` is "lora" (default), "prompt", "scl" or "full".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedjax_med.models.base import Model, from_flax, num_outputs_for
from fedjax_med.models.cnn import CNN
from fedjax_med.models.haiku_models import haiku_logistic_regression, haiku_mlp
from fedjax_med.models.layers import CONV_IMPLS
from fedjax_med.models.linear import LogisticRegression
from fedjax_med.models.mlp import MLP
from fedjax_med.models.text.classifier import minilm_classifier
from fedjax_med.models.text.minilm import PEFTConfig

MODEL_NAMES = ("logistic_regression", "mlp", "cnn", "minilm")
LIBRARIES = ("flax", "haiku")

# Options that each (library, name) pair accepts.
_OPTIONS: dict[tuple[str, str], tuple[str, ...]] = {
  ("flax", "logistic_regression"): (),
  ("flax", "mlp"): ("hidden_sizes", "use_batch_norm"),
  ("flax", "cnn"): (
    "channels",
    "kernel_size",
    "conv_impl",
    "use_batch_norm",
  ),
  ("flax", "minilm"): (
    "peft",
    "lora_rank",
    "lora_alpha",
    "lora_targets",
    "num_prompts",
    "scl_rank",
    "scl_train_down_projection",
    "num_layers",
  ),
  ("haiku", "logistic_regression"): (),
  ("haiku", "mlp"): ("hidden_sizes",),
}

# Options given as sequences become tuples, because flax module attributes
# must be hashable and configs often hold lists.
_SEQUENCE_OPTIONS = (
  "hidden_sizes",
  "channels",
  "kernel_size",
  "lora_targets",
)


def _build(
  library: str, name: str, num_outputs: int, options: dict[str, Any]
) -> Model:
  if library == "haiku":
    if name == "logistic_regression":
      return haiku_logistic_regression(num_outputs)
    return haiku_mlp(num_outputs, **options)

  if name == "minilm":
    options = dict(options)
    num_layers = options.pop("num_layers", 6)
    method = options.pop("peft", "lora")
    peft = PEFTConfig(method=method, **options)
    return minilm_classifier(num_outputs, peft=peft, num_layers=num_layers)
  if name == "logistic_regression":
    module = LogisticRegression(num_outputs)
  elif name == "mlp":
    module = MLP(num_outputs, **options)
  else:
    module = CNN(num_outputs, **options)
  return from_flax(module, num_outputs)


def get_model(
  name: str,
  *,
  num_classes: int,
  feature_shape: Sequence[int],
  library: str = "flax",
  **options: Any,
) -> Model:
  """Builds the model `name` for a classification task.

  Args:
    name: One of `MODEL_NAMES`.
    num_classes: Number of classes; a binary task gets one output logit.
    feature_shape: Shape of one example, without the batch axis: `(d,)` for
      tabular data, `(height, width, channels)` for images. The CNN needs
      the 3-D image shape, and minilm token features `(2, seq_len)`.
    library: "flax" (all models) or "haiku" (logistic_regression and mlp).
    **options: Model options, listed in this module's docstring.

  Returns:
    A `Model` whose logits have shape `[batch, num_outputs]`.

  Raises:
    ValueError: If the name, library, an option or a `conv_impl` value is
      unknown, the library does not provide the model, or the CNN gets a
      feature shape that is not `(height, width, channels)` or minilm one
      that is not `(2, seq_len)`.
  """
  if name not in MODEL_NAMES:
    raise ValueError(f"Unknown model {name!r}; use one of {MODEL_NAMES}.")
  if library not in LIBRARIES:
    raise ValueError(f"Unknown library {library!r}; use one of {LIBRARIES}.")
  if (library, name) not in _OPTIONS:
    raise ValueError(
      f"Model {name!r} is not available with library={library!r}; "
      "use library='flax'."
    )

  option_names = _OPTIONS[(library, name)]
  unknown = sorted(set(options) - set(option_names))
  if unknown:
    flax_options = _OPTIONS[("flax", name)]
    hint = ""
    if library != "flax" and set(unknown) <= set(flax_options):
      hint = " The flax version accepts them, so use library='flax'."
    raise ValueError(
      f"Unknown options {unknown} for model {name!r} with "
      f"library={library!r}; valid options: {list(option_names)}.{hint}"
    )

  feature_shape = tuple(int(d) for d in feature_shape)
  if name == "cnn":
    if len(feature_shape) != 3:
      raise ValueError(
        f"The cnn model needs image features of shape (height, width, "
        f"channels), got feature_shape={feature_shape}; load the images "
        "with as_images=True."
      )
    conv_impl = options.get("conv_impl", "patches")
    if conv_impl not in CONV_IMPLS:
      raise ValueError(
        f"conv_impl={conv_impl!r} is not supported; use one of {CONV_IMPLS}."
      )

  if name == "minilm" and (
    len(feature_shape) != 2 or feature_shape[0] != 2 or feature_shape[1] > 512
  ):
    raise ValueError(
      f"The minilm model reads token ids and an attention mask of shape "
      f"(2, seq_len) with seq_len <= 512, got feature_shape={feature_shape};"
      " tokenize the text with fedjax_med.models.text.tokenize."
    )

  options = {
    key: tuple(value) if key in _SEQUENCE_OPTIONS else value
    for key, value in options.items()
  }
  return _build(library, name, num_outputs_for(num_classes), options)
