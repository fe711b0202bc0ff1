"""Base-to-new evaluation: train prompts on some classes, test on others.

The protocol of FedTPG (C. Qiu et al., ICLR 2024, arXiv:2310.06123) and
other prompt learners after CoOp: prompts are learned on the base classes
and then classify, with the same prompts, images of base classes among
base classes and images of new classes among new classes. The harmonic
mean `2 b n / (b + n)` of the two accuracies rewards prompts that fit the
base classes without losing the zero-shot transfer to unseen ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedjax_med.data.federated_data import ClientArrays, FederatedData
from fedjax_med.models.dual_encoder import DualEncoder
from fedjax_med.prompts.learner import PromptLearner, prompt_model
from fedjax_med.training.evaluation import evaluate, make_predict_fn

PyTree = Any


def _select_rows(split: ClientArrays, classes: np.ndarray) -> list:
  position = {int(c): i for i, c in enumerate(classes)}
  clients = []
  for k in range(split.num_clients):
    x, y = split.client(k)
    keep = np.isin(y, classes)
    labels = np.asarray([position[int(v)] for v in y[keep]], np.int32)
    clients.append((x[keep], labels))
  return clients


def select_classes(
  data: FederatedData, classes: Sequence[int]
) -> FederatedData:
  """Keeps the rows of `classes` and relabels class `classes[i]` as `i`.

  Raises:
    ValueError: If `classes` is empty, repeats a class or names one outside
      `[0, data.num_classes)`.
  """
  classes = np.asarray(classes, np.int64)
  if classes.size == 0 or np.unique(classes).size != classes.size:
    raise ValueError(
      f"classes={classes.tolist()} must be a non-empty list without repeats."
    )
  if classes.min() < 0 or classes.max() >= data.num_classes:
    raise ValueError(
      f"classes={classes.tolist()} must lie in [0, {data.num_classes}) for "
      f"{data.name or 'the dataset'}."
    )
  return FederatedData.from_clients(
    _select_rows(data.train, classes),
    _select_rows(data.test, classes),
    client_names=data.client_names,
    feature_names=data.feature_names,
    num_classes=max(int(classes.size), 2),
    name=data.name,
  )


def _fill_padding(split: ClientArrays) -> ClientArrays:
  # Padding rows repeat the client's real rows cyclically, so a learner
  # that reads batch statistics (the generator's style option) reads the
  # client's images only. Metrics still skip them through the mask.
  x = np.array(split.x)
  for k in range(split.num_clients):
    n = int(split.num_examples[k])
    if 0 < n < x.shape[1]:
      x[k, n:] = x[k, np.arange(x.shape[1] - n) % n]
  return split.replace(x=x)


def harmonic_mean(base: float, new: float) -> float:
  """Returns `2 b n / (b + n)`, or 0 when both are 0."""
  if base + new <= 0:
    return 0.0
  return 2.0 * base * new / (base + new)


def evaluate_base_new(
  encoder: DualEncoder,
  encoder_params: PyTree,
  learner: PromptLearner,
  prompt_params: PyTree,
  data: FederatedData,
  class_names: Sequence[str],
  base_classes: Sequence[int],
  new_classes: Sequence[int],
) -> dict:
  """Evaluates prompts on the test split's base and new classes.

  Args:
    encoder: The frozen towers.
    encoder_params: Their weights.
    learner: The prompt learner.
    prompt_params: Its trained parameters.
    data: All classes, labels in `[0, len(class_names))`.
    class_names: The name of every label of `data`.
    base_classes: Labels the prompts were trained on.
    new_classes: Labels never seen in training.

  Returns:
    `{"base": ..., "new": ..., "harmonic_mean": float}`, where "base" and
    "new" are the dicts of `training.evaluation.evaluate` (pooled
    accuracy under `["pooled"]["accuracy"]`, one entry per site under
    `["per_client"]`).
  """
  result = {}
  for key, classes in (("base", base_classes), ("new", new_classes)):
    names = [class_names[c] for c in classes]
    model = prompt_model(encoder, encoder_params, learner, names)
    subset = select_classes(data, classes)
    result[key] = evaluate(
      make_predict_fn(model),
      {"params": prompt_params},
      _fill_padding(subset.test),
      subset.client_names,
    )
  result["harmonic_mean"] = harmonic_mean(
    result["base"]["pooled"]["accuracy"], result["new"]["pooled"]["accuracy"]
  )
  return result
