"""A local Flower federation on 127.0.0.1: one SuperLink, one SuperNode a site.

`LoopbackFederation` starts `flower-superlink` and one `flower-supernode`
per site as subprocesses. Each gets its own `FLWR_HOME` under a work
directory, and every port is on 127.0.0.1. It writes the CLI's connection
file, runs an app with `flwr run` and reads the run's status with
`flwr ls`. On
exit it stops every process it started and reaps them, including the
detached `flower-superexec` children that the SuperLink and SuperNodes
spawn in their own sessions.

Flower contacts its own servers by default: every process checks for
updates and sends telemetry, and the SuperLink installs each app's
dependencies from the package index. `FLOWER_OFFLINE_ENV` switches the
first two off, and the SuperLink starts with
`--disable-runtime-dependency-installation`, so the app runs with the
packages already installed. Flower 1.42 serves the Fleet, Control and
ServerApp APIs on the SuperLink's one port; each SuperNode needs its own
local runtime `--port`.
"""

from __future__ import annotations

import ctypes
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import IO

from absl import logging

FLOWER_OFFLINE_ENV = {
  "FLWR_TELEMETRY_ENABLED": "0",
  "FLWR_DISABLE_UPDATE_CHECK": "1",
  # The SuperExec polls for work every second by default.
  "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",
}
CONNECTION = "loopback"
_PR_SET_PDEATHSIG = 1  # From <sys/prctl.h>.
_BIN = pathlib.Path(sys.executable).parent


def free_port() -> int:
  """Returns a TCP port on 127.0.0.1 that was free a moment ago."""
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def offline_env(home: pathlib.Path) -> dict[str, str]:
  """Returns the environment of a Flower process with its own FLWR_HOME.

  The interpreter's bin directory goes first on PATH because the SuperLink
  and SuperNodes start `flower-superexec` by name.
  """
  path = os.pathsep.join([str(_BIN), os.environ.get("PATH", "")])
  return {
    **os.environ,
    **FLOWER_OFFLINE_ENV,
    "FLWR_HOME": str(home),
    "PATH": path,
  }


def _die_with_parent() -> None:
  """Asks Linux to SIGTERM this child when the process that started it dies.

  Runs in the child between fork and exec. It covers a test runner killed
  before its cleanup runs. The SuperExecs exit with their SuperLink or
  SuperNode in turn.
  """
  libc = ctypes.CDLL(None, use_errno=True)
  if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
    raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def _wait_http_ok(url: str, timeout: float, process) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if process.poll() is not None:
      raise RuntimeError(
        f"the SuperLink exited with code {process.returncode} before {url} "
        "answered; see its log in the work directory."
      )
    try:
      with urllib.request.urlopen(url, timeout=1) as response:
        if response.status == 200:
          return
    except (urllib.error.URLError, ConnectionError, TimeoutError):
      pass
    time.sleep(0.1)
  raise TimeoutError(
    f"{url} did not return 200 within {timeout:.0f} s; see the SuperLink's "
    "log in the work directory."
  )


def superexec_children(parents: list[int]) -> list[int]:
  """Returns the pids of live processes started with `--parent-pid P`."""
  found = []
  markers = {f"--parent-pid\0{pid}\0" for pid in parents}
  for entry in pathlib.Path("/proc").iterdir():
    if not entry.name.isdigit():
      continue
    try:
      cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
      continue
    if any(marker in cmdline for marker in markers):
      found.append(int(entry.name))
  return found


def _wait_gone(parents: list[int], timeout: float) -> list[int]:
  """Waits for the SuperExecs of `parents` to exit; returns those left."""
  deadline = time.monotonic() + timeout
  children = superexec_children(parents)
  while children and time.monotonic() < deadline:
    time.sleep(0.2)
    children = superexec_children(parents)
  return children


class LoopbackFederation:
  """A SuperLink and one SuperNode per node config, on 127.0.0.1.

  Use it as a context manager:

    with LoopbackFederation(workdir, ["partition-id=0", ...]) as fed:
      fed.run_app(app_dir, 'num-sites=4 out-dir="/tmp/x"')
      assert fed.run_status() == "finished:completed"
  """

  def __init__(
    self,
    workdir: str | pathlib.Path,
    node_configs: list[str],
    *,
    startup_timeout: float = 60.0,
  ):
    self.workdir = pathlib.Path(workdir)
    self.node_configs = list(node_configs)
    self.startup_timeout = startup_timeout
    self.port = 0
    self._processes: list[subprocess.Popen] = []
    self._logs: list[IO] = []

  @property
  def pids(self) -> list[int]:
    """Process ids of the SuperLink and SuperNodes started so far."""
    return [process.pid for process in self._processes]

  def _start(self, name: str, args: list[str]) -> subprocess.Popen:
    home = self.workdir / name
    home.mkdir(parents=True, exist_ok=True)
    log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115
    self._logs.append(log)
    process = subprocess.Popen(
      [str(_BIN / args[0]), *args[1:]],
      env=offline_env(home),
      stdout=log,
      stderr=subprocess.STDOUT,
      preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    self._processes.append(process)
    return process

  def __enter__(self) -> LoopbackFederation:
    try:
      self.start()
    except BaseException:
      self.stop()
      raise
    return self

  def __exit__(self, *exc_info) -> None:
    self.stop()

  def start(self) -> None:
    """Starts the SuperLink, waits for its health check, starts the nodes."""
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.port = free_port()
    link = self._start(
      "superlink",
      [
        "flower-superlink",
        "--insecure",
        "--host",
        "127.0.0.1",
        "--port",
        str(self.port),
        "--disable-runtime-dependency-installation",
      ],
    )
    _wait_http_ok(
      f"http://127.0.0.1:{self.port}/health", self.startup_timeout, link
    )
    for k, node_config in enumerate(self.node_configs):
      self._start(
        f"supernode{k}",
        [
          "flower-supernode",
          "--insecure",
          "--superlink",
          f"127.0.0.1:{self.port}",
          "--port",
          str(free_port()),
          "--node-config",
          node_config,
        ],
      )
    cli = self.workdir / "cli"
    cli.mkdir(parents=True, exist_ok=True)
    (cli / "config.toml").write_text(
      "[superlink]\n"
      f'default = "{CONNECTION}"\n'
      f"[superlink.{CONNECTION}]\n"
      f'address = "127.0.0.1:{self.port}"\n'
      "insecure = true\n"
    )
    logging.info(
      "Loopback federation: SuperLink on 127.0.0.1:%d, %d SuperNodes.",
      self.port,
      len(self.node_configs),
    )

  def _flwr(self, args: list[str], timeout: float):
    return subprocess.run(
      [str(_BIN / "flwr"), *args],
      env=offline_env(self.workdir / "cli"),
      capture_output=True,
      text=True,
      timeout=timeout,
      check=False,
    )

  def run_app(
    self, app_dir: str | pathlib.Path, run_config: str, timeout: float = 300
  ) -> subprocess.CompletedProcess:
    """Runs `flwr run APP loopback --stream` and waits for it to end.

    `flwr run` can return 0 when the ServerApp failed, so check
    `run_status()` afterwards.
    """
    result = self._flwr(
      [
        "run",
        str(app_dir),
        CONNECTION,
        "--stream",
        "--run-config",
        run_config,
      ],
      timeout,
    )
    (self.workdir / "flwr_run.log").write_text(result.stdout + result.stderr)
    return result

  def run_status(self) -> str:
    """Returns the newest run's status, e.g. "finished:completed"."""
    result = self._flwr(["ls", CONNECTION, "--format", "json"], 60)
    if result.returncode != 0:
      raise RuntimeError(
        f"flwr ls failed with code {result.returncode}: {result.stderr}"
      )
    runs = json.loads(result.stdout)["runs"]
    if not runs:
      raise RuntimeError("flwr ls lists no run; flwr run did not submit one.")
    return runs[-1]["status"]

  def stop(self) -> None:
    """Stops the nodes, then the SuperLink, and reaps their children."""
    pids = [p.pid for p in self._processes]
    # SuperNodes first, so that none reconnects to a stopping SuperLink.
    for process in reversed(self._processes):
      if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    for process in reversed(self._processes):
      try:
        process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        logging.warning("Process %d ignored SIGTERM; killing it.", process.pid)
        process.kill()
        process.wait(timeout=10)
    # Each SuperExec polls its parent every 0.2 s and exits once it is
    # gone, which takes longer on a loaded machine; kill any that lag, and
    # wait until init has reaped them.
    children = _wait_gone(pids, timeout=10)
    for pid in children:
      logging.warning("SuperExec %d outlived its parent; killing it.", pid)
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    left = _wait_gone(pids, timeout=10)
    if left:
      logging.error("SuperExecs %s survived SIGKILL for 10 s.", left)
    for log in self._logs:
      log.close()
    self._processes.clear()
    self._logs.clear()
