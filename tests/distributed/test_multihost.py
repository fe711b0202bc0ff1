"""Two processes on 127.0.0.1 agree with the single-process FedAvg run."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from fedjax_med.distributed import multihost
from tests.distributed import multihost_worker
from tests.distributed.results import parse_result

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
WORKER_TIMEOUT_S = 240


def _free_port():
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def _run_workers(num_processes, local_devices):
  address = f"127.0.0.1:{_free_port()}"
  env = dict(os.environ)
  for name in (
    multihost.ENV_COORDINATOR_ADDRESS,
    multihost.ENV_NUM_PROCESSES,
    multihost.ENV_PROCESS_ID,
  ):
    env.pop(name, None)
  workers = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "tests.distributed.multihost_worker",
        f"--coordinator_address={address}",
        f"--num_processes={num_processes}",
        f"--process_id={index}",
        f"--local_devices={local_devices}",
      ],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for index in range(num_processes)
  ]
  outputs = []
  try:
    for worker in workers:
      stdout, stderr = worker.communicate(timeout=WORKER_TIMEOUT_S)
      outputs.append((worker.returncode, stdout, stderr))
  finally:
    # A worker whose peer failed would wait for the heartbeat timeout.
    for worker in workers:
      if worker.poll() is None:
        worker.kill()
        worker.wait()
  return [parse_result(*output) for output in outputs]


@pytest.mark.slow
def test_two_processes_match_single_process():
  reference = multihost_worker.run_fedavg(mesh=None)
  results = _run_workers(num_processes=2, local_devices=2)
  assert [r["process_index"] for r in results] == [0, 1]
  for result in results:
    assert result["distributed"]
    assert result["process_count"] == 2
    assert result["device_count"] == 4
    assert result["local_device_count"] == 2
    assert result["traces"] == 1
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      result["params"],
      reference["params"],
    )
    np.testing.assert_allclose(result["loss"], reference["loss"], rtol=1e-5)
  # Both processes hold the same replicated model, bit for bit.
  assert results[0]["params"] == results[1]["params"]


def test_initialize_without_settings_is_single_process(monkeypatch):
  monkeypatch.delenv(multihost.ENV_COORDINATOR_ADDRESS, raising=False)
  monkeypatch.delenv(multihost.ENV_NUM_PROCESSES, raising=False)
  monkeypatch.delenv(multihost.ENV_PROCESS_ID, raising=False)
  assert multihost.initialize() is False


def test_initialize_missing_settings_raises(monkeypatch):
  monkeypatch.delenv(multihost.ENV_PROCESS_ID, raising=False)
  monkeypatch.setenv(multihost.ENV_NUM_PROCESSES, "2")
  with pytest.raises(ValueError, match="process_id"):
    multihost.initialize(coordinator_address="127.0.0.1:1")


def test_initialize_rejects_bad_process_id():
  with pytest.raises(ValueError, match="process_id=2 with num_processes=2"):
    multihost.initialize("127.0.0.1:1", num_processes=2, process_id=2)
