"""Prompt learning for frozen image-text dual encoders."""

from fedjax_med.prompts.base_new import (
  evaluate_base_new,
  harmonic_mean,
  select_classes,
)
from fedjax_med.prompts.biprompt import (
  BiPrompt,
  BiPromptConfig,
  balanced_text_features,
  biprompt,
  debiasing_loss,
  erase_views,
  gradient_saliency,
  num_causal_patches,
  predict_with_biprompt,
)
from fedjax_med.prompts.coop import CoOpConfig, coop
from fedjax_med.prompts.generator import (
  GeneratorConfig,
  PromptGenerator,
  prompt_generator,
  redundancy_penalty,
)
from fedjax_med.prompts.learner import (
  ClassTokens,
  PromptLearner,
  insert_context,
  prepare_class_tokens,
  prompt_model,
)

__all__ = [
  "BiPrompt",
  "BiPromptConfig",
  "ClassTokens",
  "CoOpConfig",
  "GeneratorConfig",
  "PromptGenerator",
  "PromptLearner",
  "balanced_text_features",
  "biprompt",
  "coop",
  "debiasing_loss",
  "erase_views",
  "evaluate_base_new",
  "gradient_saliency",
  "harmonic_mean",
  "insert_context",
  "num_causal_patches",
  "predict_with_biprompt",
  "prepare_class_tokens",
  "prompt_generator",
  "prompt_model",
  "redundancy_penalty",
  "select_classes",
]
