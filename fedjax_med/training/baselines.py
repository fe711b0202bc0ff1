"""Pooled and local-only baselines, as FLamby reports them.

* Pooled: one model trained centrally on every site's training rows
  together, the upper reference that a federated method should approach.
  It runs through the same round with a single client holding the pooled
  rows, `clients_per_round=1` and FedAvg's server step `sgd(1.0)`, which is
  exactly minibatch SGD for `num_rounds * num_local_steps` steps.
* Local: each site trains alone on its own rows, with the same settings as
  the pooled baseline. Every local model is evaluated on every site's test
  split (FLamby's "Local k" rows); the summary `per_client` entry of site `k`
  is site `k`'s own model on its own test split.
"""

from __future__ import annotations

import copy
import os

import ml_collections
import numpy as np

from fedjax_med.data.federated_data import FederatedData, stack_clients


def pooled_config(
  config: ml_collections.ConfigDict,
) -> ml_collections.ConfigDict:
  """Returns the config for one centrally trained model."""
  config = copy.deepcopy(config)
  with config.unlocked():
    config.algorithm.name = "fedavg"
    config.server.learning_rate = 1.0
    config.server.schedule = "constant"
    config.cohort.clients_per_round = 1
    config.cohort.sampling = "uniform"
    config.cohort.clients_per_chunk = 0
  return config


def pooled_train_data(data: FederatedData) -> FederatedData:
  """Returns `data` with every site's training rows in one client."""
  x, y = data.train.pooled()
  return data.replace(train=stack_clients([(x, y)]), client_names=("pooled",))


def site_train_data(data: FederatedData, k: int) -> FederatedData:
  """Returns `data` with site `k`'s training rows as the only client."""
  return data.replace(
    train=stack_clients([data.train.client(k)]),
    client_names=(data.client_names[k],),
  )


def run_local_baseline(config, data: FederatedData, workdir: str, train_fn):
  """Trains one model per site and gathers their results.

  Args:
    config: Experiment config; its client settings train each site.
    data: The federated dataset.
    workdir: Parent directory; site `k` runs in `local_<name>`.
    train_fn: `(config, train_data, eval_data, workdir) -> final metrics`.

  Returns:
    Final metrics with "per_training_site" (each local model on every test
    split) and "per_client" (each site's own model on its own test split).
  """
  site_config = pooled_config(config)
  per_training_site = {}
  for k, name in enumerate(data.client_names):
    site_dir = os.path.join(workdir, f"local_{name.replace(' ', '_')}")
    per_training_site[name] = train_fn(
      site_config, site_train_data(data, k), data, site_dir
    )

  own = {
    name: per_training_site[name]["per_client"][name]
    for name in data.client_names
  }
  sizes = np.asarray(data.test.num_examples, float)
  accuracies = np.asarray([own[n]["accuracy"] for n in data.client_names])
  worst = int(np.nanargmin(accuracies))
  return {
    "algorithm": "local",
    "dataset": data.name,
    "seed": config.seed,
    "rounds": config.num_rounds,
    # Each site's test rows predicted by that site's own model.
    "pooled_test_accuracy": float(np.sum(accuracies * sizes) / sizes.sum()),
    "per_client": own,
    "worst_client": {
      "name": data.client_names[worst],
      "accuracy": float(accuracies[worst]),
    },
    "per_training_site": {
      name: {
        "pooled_test_accuracy": result["pooled_test_accuracy"],
        "per_client": result["per_client"],
      }
      for name, result in per_training_site.items()
    },
    "config": config.to_dict(),
  }
