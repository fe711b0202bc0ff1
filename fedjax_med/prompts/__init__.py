"""Prompt learning for frozen image-text dual encoders."""

from fedjax_med.prompts.base_new import (
  evaluate_base_new,
  harmonic_mean,
  select_classes,
)
from fedjax_med.prompts.coop import CoOpConfig, coop
from fedjax_med.prompts.learner import (
  ClassTokens,
  PromptLearner,
  insert_context,
  prepare_class_tokens,
  prompt_model,
)

__all__ = [
  "ClassTokens",
  "CoOpConfig",
  "PromptLearner",
  "coop",
  "evaluate_base_new",
  "harmonic_mean",
  "insert_context",
  "prepare_class_tokens",
  "prompt_model",
  "select_classes",
]
