r"""Runs a config over a local Flower federation on 127.0.0.1.

Starts a SuperLink and one SuperNode per site (partition-id 0..N-1), runs
the Flower app in deploy/flower with `flwr run`, prints the run's status and
each round's training loss, and stops every process. Telemetry, the update
check and run-time dependency installation are off.

Example:
  python scripts/flower_loopback.py --config=configs/fed_heart_disease.py \
      --overrides="num_rounds=3" --workdir=/tmp/flower_loopback

The final model is in <workdir>/out/final_variables.npz, the metrics in
<workdir>/out/metrics.json and every process's log in <workdir>/federation.
"""

import json
import pathlib

from absl import app, flags

from fedjax_med.distributed.flower.loopback import LoopbackFederation

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_CONFIG = flags.DEFINE_string(
  "config",
  str(_ROOT / "configs" / "fed_heart_disease.py"),
  "fedjax_med config file whose algorithm has round pieces.",
)
_OVERRIDES = flags.DEFINE_string(
  "overrides", "", "Space-separated key=value config overrides."
)
_SITES = flags.DEFINE_integer("sites", 4, "SuperNodes, one per client.")
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for logs, Flower state and results."
)
_TIMEOUT = flags.DEFINE_float(
  "timeout", 900, "Seconds the whole `flwr run` may take."
)
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  workdir = pathlib.Path(_WORKDIR.value).resolve()
  out = workdir / "out"
  config = pathlib.Path(_CONFIG.value).resolve()
  run_config = (
    f'config-path="{config}" config-overrides="{_OVERRIDES.value}" '
    f'num-sites={_SITES.value} out-dir="{out}"'
  )
  node_configs = [f"partition-id={k}" for k in range(_SITES.value)]
  with LoopbackFederation(workdir / "federation", node_configs) as federation:
    federation.run_app(_ROOT / "deploy" / "flower", run_config, _TIMEOUT.value)
    status = federation.run_status()
  print(f"status={status}")
  metrics_path = out / "metrics.json"
  if metrics_path.is_file():
    for metrics in json.loads(metrics_path.read_text()):
      print(
        f"round {metrics['round']}: train_loss={metrics['train_loss']:.4f} "
        f"({metrics['seconds']:.1f} s)"
      )
  if status != "finished:completed":
    raise SystemExit(
      f"the run ended with status {status}; see the logs in "
      f"{workdir / 'federation'}."
    )


if __name__ == "__main__":
  app.run(main)
