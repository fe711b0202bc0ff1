"""The device mesh that splits a cohort's clients over devices.

A round shards its cohort over a one-axis mesh named `CLIENT_AXIS`, and
`engine.map_cohort` reduces the aggregate over that axis. The mesh uses
`Mesh`'s default (Auto) axis types: `jax.make_mesh` in JAX 0.10 makes
Explicit axes, under which `shard_map` rejects the replicated arrays a client
function closes over.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

CLIENT_AXIS = "clients"
_FORCED_COUNT = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def request_cpu_devices(num_devices: int | None) -> bool:
  """Requests `num_devices` CPU devices from JAX before its backend starts.

  On a CPU, each device runs its shard of the cohort on its own thread, so
  `num_devices` up to the number of cores uses them all. The request is
  left out when it cannot apply, and `client_mesh` then names the fix:
  after the backend has started (any JAX computation or `jax.devices()`),
  or when `XLA_FLAGS` already sets
  `--xla_force_host_platform_device_count`, which it would override. It
  does not touch GPUs or TPUs. More devices than cores is allowed (tests
  fake 8 devices on 2 cores) but shares the cores, so it logs a warning.

  Args:
    num_devices: Devices the run shards its cohort over; None, 0 or 1
      requests nothing.

  Returns:
    True if the request was made, False if it was left out.
  """
  if num_devices is None or num_devices <= 1:
    return False
  if _FORCED_COUNT.search(os.environ.get("XLA_FLAGS", "")):
    return False
  if jax.config.jax_num_cpu_devices >= num_devices:
    return False
  try:
    jax.config.update("jax_num_cpu_devices", int(num_devices))
  except RuntimeError:
    # The backend has started, so its device count is fixed.
    return False
  cores = usable_cores()
  if num_devices > cores:
    logging.warning(
      "Requested %d CPU devices on %d usable cores; the devices beyond the "
      "core count share the cores and make a round slower, not faster.",
      num_devices,
      cores,
    )
  return True


def usable_cores() -> int:
  """Returns the CPU cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    return os.cpu_count() or 1


def client_mesh(num_devices: int | None) -> Mesh | None:
  """Builds a mesh over the first `num_devices` of `jax.devices()`.

  In a multi-process run `jax.devices()` lists every process's devices, so
  `num_devices=jax.device_count()` spans them all.

  Args:
    num_devices: Devices to shard the cohort over; None, 0 or 1 means one
      device and no mesh.

  Returns:
    A mesh with the single axis `CLIENT_AXIS`, or None for one device.

  Raises:
    ValueError: If `num_devices` is negative or exceeds the devices present.
  """
  if num_devices is None or num_devices in (0, 1):
    return None
  if num_devices < 0:
    raise ValueError(
      f"cohort.num_devices={num_devices} must not be negative; use 0 or 1 "
      "for one device, or the number of devices to shard clients over."
    )
  devices = jax.devices()
  if num_devices > len(devices):
    forced = _FORCED_COUNT.search(os.environ.get("XLA_FLAGS", ""))
    if forced and devices[0].platform == "cpu":
      fix = (
        f"XLA_FLAGS sets {forced.group(0)}, which fixes the CPU device "
        f"count; raise it to {num_devices}, or unset it so that "
        "scripts/train.py makes the devices."
      )
    else:
      fix = (
        f"on CPU, scripts/train.py makes them when JAX has not started; in "
        f"your own program call request_cpu_devices({num_devices}) or set "
        f"XLA_FLAGS=--xla_force_host_platform_device_count={num_devices} "
        "before any JAX computation."
      )
    raise ValueError(
      f"cohort.num_devices={num_devices} exceeds the {len(devices)} "
      f"{devices[0].platform} devices present; lower it, or {fix}"
    )
  return Mesh(np.asarray(devices[:num_devices]), (CLIENT_AXIS,))


def replicate(tree: Any, mesh: Mesh | None) -> Any:
  """Places a copy of every leaf of `tree` on each device of `mesh`.

  Every process must pass the same values: in a multi-process run each one
  fills its own devices' copies from its local `tree`.
  """
  if mesh is None:
    return jax.device_put(tree)
  replicated = NamedSharding(mesh, P())
  if mesh.is_multi_process:

    def to_global(leaf):
      host = np.asarray(leaf)
      return jax.make_array_from_callback(
        host.shape, replicated, lambda index: host[index]
      )

    return jax.tree.map(to_global, tree)
  return jax.device_put(tree, replicated)


def jit_round(run_round: Callable, mesh: Mesh | None) -> Callable:
  """Jit-compiles `run_round`, with replicated outputs under a mesh.

  Pinning the outputs to the replicated sharding of `replicate` gives the
  next round inputs of the same sharding, so the round compiles once.
  """
  if mesh is None:
    return jax.jit(run_round)
  return jax.jit(run_round, out_shardings=NamedSharding(mesh, P()))
