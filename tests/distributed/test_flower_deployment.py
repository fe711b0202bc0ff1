"""A Flower deployment on 127.0.0.1 reproduces the simulation.

One SuperLink and four SuperNodes, one per Fed-Heart-Disease hospital, run
two FedAvg rounds of configs/fed_heart_disease.py through `flwr run`. The
final model must equal the compiled simulation's with the same seed up to
float32 rounding. Every Flower process runs with telemetry and the update
check off, and the SuperLink installs nothing at run time (see
`fedjax_med.distributed.flower.loopback`), so nothing leaves 127.0.0.1.
"""

import json
import pathlib

import jax
import numpy as np
import pytest

pytest.importorskip("flwr")

from fedjax_med.distributed.flower import federation as federation_lib  # noqa: E402
from fedjax_med.distributed.flower import loopback  # noqa: E402
from tests.distributed.reference import simulate  # noqa: E402

ROOT = pathlib.Path(__file__).parents[2]
CONFIG = ROOT / "configs" / "fed_heart_disease.py"
APP = ROOT / "deploy" / "flower"
OVERRIDES = "num_rounds=2"


@pytest.mark.slow
def test_deployment_matches_simulation(tmp_path):
  out = tmp_path / "out"
  federation = loopback.LoopbackFederation(
    tmp_path / "federation", [f"partition-id={k}" for k in range(4)]
  )
  run_config = (
    f'config-path="{CONFIG}" config-overrides="{OVERRIDES}" '
    f'num-sites=4 out-dir="{out}" round-timeout=240'
  )
  with federation:
    result = federation.run_app(APP, run_config, timeout=400)
    status = federation.run_status()
    pids = federation.pids
  assert result.returncode == 0, result.stderr
  # flwr run returns 0 even when the ServerApp fails.
  assert status == "finished:completed", (tmp_path / "federation").as_posix()
  # Every process was stopped and reaped, SuperExec children included.
  assert not loopback.superexec_children(pids)

  config = federation_lib.load_config(str(CONFIG), OVERRIDES)
  _, expected, history = simulate(config)
  deployed = np.load(out / "final_variables.npz")
  leaves, _ = jax.tree_util.tree_flatten_with_path(expected)
  assert sorted(deployed.files) == sorted(
    jax.tree_util.keystr(path) for path, _ in leaves
  )
  for path, leaf in leaves:
    np.testing.assert_allclose(
      deployed[jax.tree_util.keystr(path)], leaf, rtol=1e-5, atol=1e-6
    )
  metrics = json.loads((out / "metrics.json").read_text())
  np.testing.assert_allclose(
    [m["train_loss"] for m in metrics],
    [m["train_loss"] for m in history],
    rtol=1e-5,
  )
