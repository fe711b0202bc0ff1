"""The same FedAvg rounds under Flower's simulation engine, timed.

`flower_seconds_per_round` runs the deployment's ServerApp and ClientApp
(`server_app.run_server`, `client_app.app`) under
`flwr.simulation.run_simulation` with the Ray backend: one virtual
SuperNode per client, the ClientApps in Ray actor processes on this
machine, the messages through Flower's in-memory SuperLink. The default
workload is configs/breast_cancer_fedavg.py: FedAvg, logistic regression,
10 clients, all 10 training every round. A benchmark sets it against the
compiled round's seconds per round on the same config.

Every party loads the whole dataset and takes its client's rows
(`simulation-data`), as Flower's simulation examples partition one dataset.
Ray actors serve many messages each, so the ClientApp keeps its compiled
client piece between rounds (`client_app._site_world`). The first round
also compiles, so `seconds_per_round` is the median of the later rounds.

Flower's telemetry and update check are off (`loopback.FLOWER_OFFLINE_ENV`),
Ray's usage statistics are off (`RAY_USAGE_STATS_ENABLED=0`) and its
dashboard is not started. Ray 2.55 still reaches past loopback at start-up:
under strace on this project's machine it connected a UDP socket to
8.8.8.8:53 to find the node's address, bound its GCS to the machine's
network address, and sent HTTP requests to the cloud metadata address
169.254.169.254 and a DNS query for metadata.google.internal. So by default
the measurement runs in a child process inside a new network namespace
(`unshare --net`, with only the loopback interface up), where none of these
can leave the machine.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile

from fedjax_med.distributed.flower.loopback import FLOWER_OFFLINE_ENV

DEFAULT_CONFIG = (
  pathlib.Path(__file__).parents[3] / "configs" / "breast_cancer_fedavg.py"
)
RAY_OFFLINE_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
_RESULT_PREFIX = "FLOWER_SIMULATION_RESULT "
_ROOT = pathlib.Path(__file__).parents[3]


def _run_isolated(arguments: dict, timeout: float) -> dict:
  """Runs `flower_seconds_per_round` in a child with only loopback up."""
  missing = [tool for tool in ("unshare", "ip") if shutil.which(tool) is None]
  if missing:
    raise RuntimeError(
      f"{missing} not found; the Flower simulation runs inside a network "
      "namespace (unshare from util-linux, ip from iproute2) because Ray "
      "probes cloud metadata addresses at start-up. Install them, or pass "
      "isolate=False on a machine where that traffic is acceptable."
    )
  unshare = ["unshare", "--net"]
  if os.geteuid() != 0:
    unshare.append("--map-root-user")
  script = 'ip link set lo up && exec "$0" -m "$1" "$2"'
  command = [
    *unshare,
    "sh",
    "-c",
    script,
    sys.executable,
    __name__,
    json.dumps(arguments),
  ]
  env = {**os.environ, "PYTHONPATH": str(_ROOT)}
  result = subprocess.run(
    command,
    capture_output=True,
    text=True,
    timeout=timeout,
    cwd=_ROOT,
    env=env,
    check=False,
  )
  for line in result.stdout.splitlines():
    if line.startswith(_RESULT_PREFIX):
      return json.loads(line[len(_RESULT_PREFIX) :])
  raise RuntimeError(
    f"the isolated Flower simulation exited with code {result.returncode} "
    f"and no result; its output ends with:\n{result.stderr[-3000:]}"
  )


def flower_seconds_per_round(
  config_path: str | pathlib.Path = DEFAULT_CONFIG,
  overrides: str = "",
  *,
  num_rounds: int = 4,
  num_cpus: int | None = None,
  isolate: bool = True,
  timeout: float = 600,
) -> dict:
  """Times rounds of a config under Flower's simulation engine.

  Args:
    config_path: A fedjax_med config whose algorithm has round pieces.
    overrides: `key=value` items as in `federation.load_config`;
      `num_rounds` is set from the argument below.
    num_rounds: Rounds to run, at least 2 (the first one compiles).
    num_cpus: CPUs Ray may use; each ClientApp actor takes one. Defaults
      to every CPU of the machine.
    isolate: Run in a child process inside a new network namespace (see
      the module docstring). False runs in this process, where Ray's
      start-up probes can reach the network.
    timeout: Seconds the isolated child may run.

  Returns:
    A dict with "seconds_per_round" (median over rounds 2..num_rounds of
    the ServerApp's wall-clock time from broadcast to aggregate),
    "round_seconds" (every round's), "num_clients" and
    "clients_per_round".

  Raises:
    ValueError: If `num_rounds` is below 2.
    RuntimeError: If the simulation ends without writing its metrics, or
      `isolate` is set and unshare or ip is missing.
  """
  if num_rounds < 2:
    raise ValueError(
      f"num_rounds={num_rounds} leaves no round after the first, which "
      "compiles; pass num_rounds=2 or more."
    )
  if isolate:
    arguments = dict(
      config_path=str(config_path),
      overrides=overrides,
      num_rounds=num_rounds,
      num_cpus=num_cpus,
    )
    return _run_isolated(arguments, timeout)
  os.environ.update(FLOWER_OFFLINE_ENV)
  os.environ.update(RAY_OFFLINE_ENV)
  # Imported after the switches so that Flower and Ray read them.
  from flwr.serverapp import ServerApp
  from flwr.simulation import run_simulation

  from fedjax_med.distributed.flower import client_app, server_app
  from fedjax_med.distributed.flower import federation as federation_lib

  overrides = f"{overrides} num_rounds={num_rounds}".strip()
  config = federation_lib.load_config(str(config_path), overrides)
  num_clients = int(config.data.num_clients)
  with tempfile.TemporaryDirectory() as workdir:
    os.environ.setdefault("FLWR_HOME", os.path.join(workdir, "flwr_home"))
    run_config = {
      "config-path": str(config_path),
      "config-overrides": overrides,
      "num-sites": num_clients,
      "out-dir": workdir,
      "round-timeout": 600,
      "simulation-data": True,
    }
    app = ServerApp()

    @app.main()
    def _main(grid, context):
      del context  # run_simulation passes no run config.
      server_app.run_server(grid, run_config)

    run_simulation(
      server_app=app,
      client_app=client_app.app,
      num_supernodes=num_clients,
      backend_config={
        "init_args": {
          "include_dashboard": False,
          "num_cpus": num_cpus or os.cpu_count(),
          "_node_ip_address": "127.0.0.1",
        },
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
      },
    )
    metrics_path = pathlib.Path(workdir) / "metrics.json"
    if not metrics_path.is_file():
      raise RuntimeError(
        "Flower's simulation ended without writing metrics.json; its log "
        "above has the ServerApp's error."
      )
    history = json.loads(metrics_path.read_text())
  seconds = [round_metrics["seconds"] for round_metrics in history]
  return {
    "seconds_per_round": statistics.median(seconds[1:]),
    "round_seconds": seconds,
    "num_clients": num_clients,
    "clients_per_round": int(config.cohort.clients_per_round),
  }


if __name__ == "__main__":
  # The isolated child: `python -m ... '{"num_rounds": 4, ...}'`.
  measured = flower_seconds_per_round(**json.loads(sys.argv[1]), isolate=False)
  print(_RESULT_PREFIX + json.dumps(measured), flush=True)
