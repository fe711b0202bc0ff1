"""Federated prompt learning: FedAvg over prompts of a frozen dual encoder.

References: PromptFL (T. Guo, S. Guo, J. Wang, X. Tang, W. Xu, "PromptFL:
Let Federated Participants Cooperatively Learn Prompts Instead of Models",
IEEE Transactions on Mobile Computing 2023, arXiv:2208.11625) runs FedAvg
on CoOp's context; FedTPG (C. Qiu et al., "Text-driven Prompt Generation
for Vision-Language Models in Federated Learning", ICLR 2024,
arXiv:2310.06123) runs it on a prompt generator's weights.

Every client trains the learner's parameters on its own images with the
towers frozen, and the server averages them. The round is the FedAvg family
round on `prompt_model`, whose `variables["params"]` holds only the prompt
parameters, so uplink and downlink bytes count exactly those parameters, and
clipping, noise, secure aggregation and compression act on them alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedjax_med.algorithms.fedavg import ClientConfig, CohortConfig, fedavg
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
  algorithm = fedavg(
    model,
    num_clients,
    client=client,
    cohort=cohort,
    server_learning_rate=server_learning_rate,
    aggregator=aggregator,
    dataset_name=dataset_name,
  )
  return algorithm, model
