"""Federated prompt learning: FedAvg over prompts of a frozen dual encoder.

Reference: C. Qiu, X. Li, C. K. Mummadi, M. R. Ganesh, Z. Li, L. Peng,
W.-Y. Lin, "Text-driven Prompt Generation for Vision-Language Models in
Federated Learning", ICLR 2024, arXiv:2310.06123. FedTPG runs FedAvg on a
prompt generator's weights, and FedAvg on CoOp's context vectors is the
simpler federated baseline. Both are this round with a different
`PromptLearner`.

Every client trains the learner's parameters on its own images with the
towers frozen, and the server averages them. The round is the FedAvg family
round on `prompt_model`, whose `variables["params"]` holds only the prompt
parameters, so uplink and downlink bytes count exactly those parameters, and
clipping, noise, secure aggregation and compression act on them alone.
A learner with a `penalty` (the generator's redundancy term) gets it added
to every local step's loss through the round's regularizer hook.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optax

from fedjax_med.algorithms.fedavg import (
  ClientConfig,
  ClientHooks,
  CohortConfig,
  build_fedavg_family,
)
from fedjax_med.core.aggregation import Aggregator
from fedjax_med.core.algorithm import FederatedAlgorithm
from fedjax_med.models.base import Model
from fedjax_med.models.dual_encoder import DualEncoder
from fedjax_med.prompts.learner import PromptLearner, prompt_model

PyTree = Any


def federated_prompt_learning(
  encoder: DualEncoder,
  encoder_params: PyTree,
  learner: PromptLearner,
  class_names: Sequence[str],
  num_clients: int,
  *,
  client: ClientConfig,
  cohort: CohortConfig,
  server_learning_rate: float = 1.0,
  aggregator: Aggregator | None = None,
  dataset_name: str = "the dataset",
) -> tuple[FederatedAlgorithm, Model]:
  """Builds FedAvg over the prompt parameters of `learner`.

  Args:
    encoder: The frozen towers.
    encoder_params: Their weights, closed over and never trained.
    learner: The prompts (`fedjax_med.prompts.coop` or `.generator`).
    class_names: The training classes, in label order.
    num_clients: Clients in the population.
    client: Local training settings.
    cohort: Cohort sampling, chunking and weighting.
    server_learning_rate: FedAvg's server step size.
    aggregator: Replaces the weighted mean (DP-FedAvg, secure sum).
    dataset_name: Used in error messages.

  Returns:
    `(algorithm, model)`: the model's `init(rng, x)` gives the algorithm's
    initial variables, and evaluating other classes needs another
    `prompt_model` over the same learner.
  """
  model = prompt_model(encoder, encoder_params, learner, class_names)
  hooks = None
  if learner.penalty is not None:
    tokens = learner.prepare(class_names)

    def regularizer(global_params, client_state, extra):
      del global_params, client_state, extra
      return lambda params: learner.penalty(params, tokens)

    hooks = ClientHooks(regularizer=regularizer)
  algorithm = build_fedavg_family(
    model,
    num_clients,
    client=client,
    cohort=cohort,
    server_optimizer=optax.sgd(server_learning_rate),
    hooks=hooks,
    aggregator=aggregator,
    dataset_name=dataset_name,
  )
  return algorithm, model
