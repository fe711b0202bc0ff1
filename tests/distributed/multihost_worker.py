"""One process of a multi-process FedAvg run, for `test_multihost.py`.

Started as `python -m tests.distributed.multihost_worker
--coordinator_address=127.0.0.1:PORT --num_processes=2 --process_id=I`, it
fakes `--local_devices` CPU devices, runs a few FedAvg rounds with the cohort
sharded over every process's devices and prints one `RESULT {json}` line.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
from absl import app, flags

from fedjax_med.algorithms import fedavg as fedavg_lib
from fedjax_med.core import sharding
from fedjax_med.distributed import multihost
from tests import toy

_LOCAL_DEVICES = flags.DEFINE_integer(
  "local_devices", 2, "CPU devices to fake in this process."
)

NUM_ROUNDS = 3
# 11 clients and a cohort of 7 leave padding slots on 4 devices.
CLIENT_SIZES = [30, 12, 25, 8, 19, 40, 3, 22, 17, 9, 28]
SEED = 0


def run_fedavg(mesh):
  """Runs FedAvg rounds on toy data; returns params, loss and trace count."""
  key = jax.random.PRNGKey(SEED)
  data = toy.random_binary_data(CLIENT_SIZES)
  model = toy.logistic_model()
  variables = model.init(key, jnp.zeros((1, 5)))
  algorithm = fedavg_lib.fedavg(
    model,
    len(CLIENT_SIZES),
    client=fedavg_lib.ClientConfig(
      learning_rate=0.2, num_local_steps=4, batch_size=8
    ),
    cohort=fedavg_lib.CohortConfig(
      clients_per_round=7, clients_per_chunk=2, mesh=mesh
    ),
  )
  traces = []

  def counted(state, data, round_key):
    traces.append(1)
    return algorithm.run_round(state, data, round_key)

  run_round = sharding.jit_round(counted, mesh)
  state = sharding.replicate(algorithm.init(key, variables), mesh)
  data = sharding.replicate(data, mesh)
  for r in range(NUM_ROUNDS):
    round_key = sharding.replicate(jax.random.fold_in(key, r), mesh)
    state, metrics = run_round(state, data, round_key)
  params = multihost.local_copy(state.params)
  return {
    "params": jax.tree.map(lambda x: x.tolist(), params),
    "loss": float(multihost.local_copy(metrics["train_loss"])),
    "traces": len(traces),
  }


def main(argv):
  del argv
  started = multihost.initialize(
    local_device_count=_LOCAL_DEVICES.value,
    initialization_timeout=60,
    heartbeat_timeout_seconds=10,
    shutdown_timeout_seconds=30,
  )
  mesh = sharding.client_mesh(jax.device_count())
  result = run_fedavg(mesh)
  result.update(
    distributed=started,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    device_count=jax.device_count(),
    local_device_count=jax.local_device_count(),
  )
  print("RESULT " + json.dumps(result), flush=True)
  if started:
    jax.distributed.shutdown()


if __name__ == "__main__":
  app.run(main)
