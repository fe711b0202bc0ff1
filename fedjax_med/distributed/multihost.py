"""Multi-process simulation with JAX's own distributed runtime.

Several processes (on one machine or many) each start JAX with
`initialize`, after which `jax.devices()` lists the devices of all of them.
A round then shards its cohort over a mesh of every device
(`fedjax_med.core.sharding.client_mesh(jax.device_count())`) and every
process runs the same compiled round, with the aggregate reduced across
processes by XLA's collectives (gloo on CPU).

Each setting comes from an argument, else from an absl flag of this module,
else from an environment variable:

  coordinator_address  --coordinator_address  FEDJAX_MED_COORDINATOR_ADDRESS
  num_processes        --num_processes        FEDJAX_MED_NUM_PROCESSES
  process_id           --process_id           FEDJAX_MED_PROCESS_ID

Choices this module makes:
  * The coordinator (process 0) listens on 127.0.0.1 unless `bind_address`
    sets another address. JAX's own default listens on every interface, which a
    simulation on one machine does not need. Runs across machines pass
    e.g. `bind_address="0.0.0.0:PORT"`.
  * The heartbeat and shutdown timeouts are arguments: with JAX 0.10's
    defaults (100 s and 300 s) a process whose peer died waits that long
    before the coordination service aborts it, so tests set them low.

`initialize` must run before anything starts JAX's backend (a computation,
`jax.devices()`, `jax.device_put`); JAX raises a RuntimeError otherwise.

A multi-process loop replicates the state, the data and each round's key
with `sharding.replicate`, compiles the round with `sharding.jit_round` and
reads results with `local_copy` (see `tests/distributed/multihost_worker.py`).
NOTE: `training.experiment.run_experiment` (scripts/train.py) runs in one
process only: its evaluation, metric writers and checkpoints fetch whole
arrays, which fails for arrays that span processes.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import flags, logging

ENV_COORDINATOR_ADDRESS = "FEDJAX_MED_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "FEDJAX_MED_NUM_PROCESSES"
ENV_PROCESS_ID = "FEDJAX_MED_PROCESS_ID"

_COORDINATOR_ADDRESS = flags.DEFINE_string(
  "coordinator_address",
  None,
  "host:port of process 0's coordination service, for multi-process runs.",
)
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", None, "Number of processes in a multi-process run."
)
_PROCESS_ID = flags.DEFINE_integer(
  "process_id", None, "This process's index in [0, num_processes)."
)


def _setting(value: Any, flag: flags.FlagHolder, env: str) -> str | None:
  if value is not None:
    return str(value)
  if flags.FLAGS.is_parsed() and flag.value is not None:
    return str(flag.value)
  return os.environ.get(env) or None


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  bind_address: str | None = None,
  local_device_count: int | None = None,
  initialization_timeout: int = 300,
  heartbeat_timeout_seconds: int = 100,
  shutdown_timeout_seconds: int = 300,
) -> bool:
  """Starts JAX's distributed runtime when a multi-process run is set up.

  Args:
    coordinator_address: `host:port` of process 0's coordination service.
    num_processes: Processes in the run; 1 (or nothing set anywhere) means
      a single-process run, and nothing is started.
    process_id: This process's index in `[0, num_processes)`.
    bind_address: Where process 0's coordinator listens; defaults to
      `127.0.0.1:PORT` with the coordinator's port.
    local_device_count: CPU devices to fake in this process
      (`jax_num_cpu_devices`), or None to leave the setting as it is.
    initialization_timeout: Seconds to wait for every process to connect.
    heartbeat_timeout_seconds: Seconds without a heartbeat after which the
      coordination service declares a process dead.
    shutdown_timeout_seconds: Seconds `jax.distributed.shutdown` waits for
      the other processes.

  Returns:
    True if the distributed runtime was started, False for a single process.

  Raises:
    ValueError: If some settings are missing or out of range.
  """
  address = _setting(
    coordinator_address, _COORDINATOR_ADDRESS, ENV_COORDINATOR_ADDRESS
  )
  count = _setting(num_processes, _NUM_PROCESSES, ENV_NUM_PROCESSES)
  index = _setting(process_id, _PROCESS_ID, ENV_PROCESS_ID)
  if local_device_count is not None:
    jax.config.update("jax_num_cpu_devices", int(local_device_count))
  if address is None and count in (None, "1"):
    return False
  missing = [
    name
    for name, value in (
      ("coordinator_address", address),
      ("num_processes", count),
      ("process_id", index),
    )
    if value is None
  ]
  if missing:
    raise ValueError(
      f"a multi-process run needs {', '.join(missing)}; pass them as "
      f"arguments, as --flags, or in {ENV_COORDINATOR_ADDRESS}, "
      f"{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID}."
    )
  count, index = int(count), int(index)
  if count < 1 or not 0 <= index < count:
    raise ValueError(
      f"process_id={index} with num_processes={count} is invalid; use "
      "num_processes >= 1 and 0 <= process_id < num_processes."
    )
  if bind_address is None:
    port = address.rsplit(":", 1)[-1]
    bind_address = f"127.0.0.1:{port}"
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  logging.info(
    "Starting process %d of %d; coordinator %s (listening on %s).",
    index,
    count,
    address,
    bind_address,
  )
  jax.distributed.initialize(
    coordinator_address=address,
    num_processes=count,
    process_id=index,
    coordinator_bind_address=bind_address,
    initialization_timeout=initialization_timeout,
    heartbeat_timeout_seconds=heartbeat_timeout_seconds,
    shutdown_timeout_seconds=shutdown_timeout_seconds,
  )
  logging.info(
    "Process %d sees %d devices, %d of them local.",
    jax.process_index(),
    jax.device_count(),
    jax.local_device_count(),
  )
  return True


def local_copy(tree: Any) -> Any:
  """Returns this process's copy of replicated arrays as numpy arrays.

  A replicated array spanning several processes cannot be fetched whole;
  every process reads the copy on its own first device.
  """
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)
