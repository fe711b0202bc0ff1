"""The pretrained all-MiniLM-L6-v2 encoder with LoRA, soft prompts and SCL."""

from fedjax_med.models.text.adapters import (
  ADAPTER_NAMES,
  LoRADense,
  SequentialCompression,
)
from fedjax_med.models.text.assets import (
  load_pretrained_params,
  load_tokenizer,
  model_dir,
  tokenize,
)
from fedjax_med.models.text.classifier import (
  count_params,
  is_trainable,
  merge_params,
  minilm_classifier,
  partition_params,
)
from fedjax_med.models.text.minilm import (
  LORA_TARGETS,
  PEFT_METHODS,
  MiniLMClassifier,
  MiniLMEncoder,
  PEFTConfig,
  split_tokens,
)

__all__ = [
  "ADAPTER_NAMES",
  "LORA_TARGETS",
  "PEFT_METHODS",
  "LoRADense",
  "MiniLMClassifier",
  "MiniLMEncoder",
  "PEFTConfig",
  "SequentialCompression",
  "count_params",
  "is_trainable",
  "load_pretrained_params",
  "load_tokenizer",
  "merge_params",
  "minilm_classifier",
  "model_dir",
  "partition_params",
  "split_tokens",
  "tokenize",
]
