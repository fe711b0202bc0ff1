"""Runs rounds on 1, 4 and 8 fake CPU devices and prints the results.

`test_sharded_rounds.py` runs this module in a fresh process, because the
fake devices exist only if XLA_FLAGS is set before JAX starts. It prints one
`RESULT {json}` line: per algorithm and device count, the final parameters
and the number of times the round was traced.
"""

from __future__ import annotations

import json
import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from fedjax_med import losses  # noqa: E402
from fedjax_med.algorithms import fedavg as fedavg_lib  # noqa: E402
from fedjax_med.algorithms import newton, scaffold  # noqa: E402
from fedjax_med.core import sharding  # noqa: E402
from fedjax_med.decentralized import algorithms as decentralized  # noqa: E402
from fedjax_med.decentralized import topology  # noqa: E402
from tests import toy  # noqa: E402

DEVICE_COUNTS = (1, 4, 8)
NUM_ROUNDS = 3
# 11 clients and a cohort of 7 leave padding slots on 4 and 8 devices.
CLIENT_SIZES = [30, 12, 25, 8, 19, 40, 3, 22, 17, 9, 28]
KEY = jax.random.PRNGKey(0)


def _algorithms(model, mesh):
  cohort = fedavg_lib.CohortConfig(
    clients_per_round=7, clients_per_chunk=2, mesh=mesh
  )
  client = fedavg_lib.ClientConfig(
    learning_rate=0.2, num_local_steps=4, batch_size=8
  )
  num_clients = len(CLIENT_SIZES)
  return {
    "fedavg": fedavg_lib.fedavg(
      model, num_clients, client=client, cohort=cohort
    ),
    "scaffold": scaffold.scaffold(
      model, num_clients, client=client, cohort=cohort
    ),
    "newton": newton.newton(
      model,
      num_clients,
      cohort=cohort,
      loss_fn=losses.cross_entropy,
      line_search=True,
    ),
    "dpsgd": decentralized.dpsgd(
      model,
      topology.make_graph("ring", num_clients).mixing_matrix,
      client=client,
      clients_per_chunk=2,
      mesh=mesh,
    ),
  }


def _run(algorithm, data, variables, mesh):
  traces = []

  def counted(state, data, key):
    traces.append(1)
    return algorithm.run_round(state, data, key)

  run_round = sharding.jit_round(counted, mesh)
  state = sharding.replicate(algorithm.init(KEY, variables), mesh)
  data = sharding.replicate(data, mesh)
  for r in range(NUM_ROUNDS):
    state, metrics = run_round(state, data, jax.random.fold_in(KEY, r))
  params = jax.tree.map(
    lambda x: np.asarray(x).tolist(), algorithm.global_variables(state)
  )
  return {
    "params": params,
    "loss": float(metrics["train_loss"]),
    "traces": len(traces),
  }


def main():
  data = toy.random_binary_data(CLIENT_SIZES)
  model = toy.logistic_model()
  variables = model.init(KEY, jnp.zeros((1, 5)))
  results = {"device_count": jax.device_count()}
  for num_devices in DEVICE_COUNTS:
    mesh = sharding.client_mesh(num_devices)
    for name, algorithm in _algorithms(model, mesh).items():
      results[f"{name}/{num_devices}"] = _run(algorithm, data, variables, mesh)
  print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
  main()
