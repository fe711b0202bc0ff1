"""Trains a federated model and measures its membership leakage.

`membership_audit(config)` loads the data and model that `config` names and
keeps `members_per_client` random training rows of each client as members.
It trains the configured algorithm through `fedjax_med.algorithms.registry`,
so `config.privacy` applies DP-SGD or DP-FedAvg exactly as in an experiment.
Then it scores a loss-threshold attack on members against non-members. The
non-members of a client are its test rows plus the training rows left out,
all drawn from the same distribution as the members.

`overfit_config()` is a setting in which the attack has a visible signal
without DP: a two-layer MLP trained for many local steps on 10 records per
Fed-Heart-Disease hospital. With seed 0 it reaches an attack AUC of 0.69
without DP, and 0.56 and 0.49 with DP-SGD at noise multipliers 2 and 4 and
clip norm 1 (measured with this module on CPU).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fedjax_med.algorithms.registry import build_algorithm
from fedjax_med.data.federated_data import FederatedData, stack_clients
from fedjax_med.data.registry import load_dataset
from fedjax_med.models.registry import get_model
from fedjax_med.privacy.audit.membership_inference import (
  example_losses,
  membership_inference_auc,
)


def overfit_config() -> ml_collections.ConfigDict:
  """Returns a Fed-Heart-Disease config that overfits a few records."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_rounds = 50

  config.data = ml_collections.ConfigDict()
  config.data.name = "fed_heart_disease"

  config.model = ml_collections.ConfigDict()
  config.model.name = "mlp"
  config.model.hidden_sizes = (32,)

  config.algorithm = ml_collections.ConfigDict()
  config.algorithm.name = "fedavg"

  config.client = ml_collections.ConfigDict()
  config.client.optimizer = "sgd"
  config.client.learning_rate = 0.2
  config.client.num_local_steps = 10
  config.client.batch_size = 8

  config.server = ml_collections.ConfigDict()
  config.server.learning_rate = 1.0

  config.cohort = ml_collections.ConfigDict()
  config.cohort.clients_per_round = 4
  config.cohort.sampling = "uniform"
  config.cohort.weighting = "example"

  config.privacy = ml_collections.ConfigDict()
  config.privacy.mode = "none"
  config.privacy.clip_norm = 1.0
  config.privacy.noise_multiplier = 1.0
  config.privacy.batch_sampling = "fixed_size"
  return config


def split_members(
  data: FederatedData, members_per_client: int | None, seed: int
) -> FederatedData:
  """Returns `data` with members as the train split, non-members as test.

  Args:
    data: The federated dataset.
    members_per_client: Training rows kept per client, drawn at random. A
      client with fewer rows keeps them all. None keeps every row.
    seed: Seed of the draw.

  Returns:
    A `FederatedData` whose train split contains the members and whose test
    split contains each client's test rows followed by its unused train rows.

  Raises:
    ValueError: If `members_per_client` is below 1.
  """
  if members_per_client is not None and members_per_client < 1:
    raise ValueError(
      f"members_per_client={members_per_client} must be at least 1, or "
      "None to keep every training row."
    )
  rng = np.random.default_rng(seed)
  members, nonmembers = [], []
  for k in range(data.num_clients):
    x, y = data.train.client(k)
    x_test, y_test = data.test.client(k)
    order = rng.permutation(len(y))
    kept, left = order[:members_per_client], order[members_per_client:]
    if members_per_client is None:
      kept, left = order, order[:0]
    members.append((x[kept], y[kept]))
    nonmembers.append(
      (np.concatenate([x_test, x[left]]), np.concatenate([y_test, y[left]]))
    )
  return data.replace(
    train=stack_clients(members), test=stack_clients(nonmembers)
  )


def membership_audit(
  config: ml_collections.ConfigDict,
  *,
  members_per_client: int | None = 10,
) -> dict[str, Any]:
  """Trains `config`'s algorithm and attacks it with its own losses.

  Args:
    config: An experiment config with the sections `data`, `model`,
      `algorithm`, `client`, `server`, `cohort`, `privacy`, plus `seed` and
      `num_rounds`, as in `overfit_config()`. `privacy.noise_multiplier` is
      used as given, and `privacy.target_epsilon` is not read.
    members_per_client: Training rows kept per client (see `split_members`).

  Returns:
    The attack's numbers (see `membership_inference_auc`) plus
    "test_accuracy" and "test_loss" of the trained model on the
    non-members, and "train_loss" on the members.
  """
  options = config.data.to_dict()
  data = load_dataset(options.pop("name"), **options)
  data = split_members(data, members_per_client, config.seed)
  model_options = config.model.to_dict()
  model = get_model(
    model_options.pop("name"),
    num_classes=data.num_classes,
    feature_shape=data.feature_shape,
    **model_options,
  )
  algorithm = build_algorithm(config, model, data)

  # The key schedule of the experiment loop: round r uses fold_in(run_key, r).
  init_key, run_key = jax.random.split(jax.random.PRNGKey(config.seed))
  sample_x = jnp.zeros((1, *data.feature_shape), jnp.float32)
  state = algorithm.init(init_key, model.init(init_key, sample_x))
  run_round = jax.jit(algorithm.run_round)
  for round_index in range(config.num_rounds):
    state, _ = run_round(state, data, jax.random.fold_in(run_key, round_index))
  variables = algorithm.global_variables(state)

  x_members, y_members = data.train.pooled()
  x_nonmembers, y_nonmembers = data.test.pooled()
  losses_members = example_losses(model, variables, x_members, y_members)
  losses_nonmembers = example_losses(
    model, variables, x_nonmembers, y_nonmembers
  )
  result = membership_inference_auc(losses_members, losses_nonmembers)

  logits, _ = model.apply(variables, jnp.asarray(x_nonmembers), train=False)
  if logits.shape[-1] == 1:
    predictions = np.asarray(logits[:, 0] > 0, np.int32)
  else:
    predictions = np.asarray(jnp.argmax(logits, axis=-1))
  result["test_accuracy"] = float(np.mean(predictions == y_nonmembers))
  result["test_loss"] = float(np.mean(losses_nonmembers))
  result["train_loss"] = float(np.mean(losses_members))
  return result
