"""The scaling benchmark script in --quick mode.

Timings are machine-dependent, so these tests check the JSON's structure,
the arithmetic between its figures, the equivalence of the ways and the
memory budget, never speed.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "scaling.py"
QUICK_BUDGET_MB = 1.0

# The quick run compiles about 15 small rounds: about 55 s of CPU time, and
# 3 minutes of wall time on a 2-core CPU with a load average of 18.
pytestmark = pytest.mark.slow


def _run_script(*args):
  # The script's directory, not the repository, comes first on sys.path.
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  return subprocess.run(
    [sys.executable, str(SCRIPT), *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  output = tmp_path_factory.mktemp("benchmark") / "results" / "quick.json"
  result = _run_script("--quick", f"--output={output}")
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(output.read_text()), result.stdout


def test_quick_top_level_keys(quick_run):
  payload, _ = quick_run
  assert set(payload) == {
    "metadata",
    "settings",
    "seconds_per_round",
    "memory",
    "flops",
    "target",
    "flower_simulation",
    "tables",
    "total_seconds",
  }
  assert payload["settings"]["quick"] is True
  # --quick shards over 2 CPU devices, which the script requests from JAX.
  assert payload["settings"]["num_devices"] == 2
  assert len(payload["metadata"]["devices"]) == 2
  assert payload["metadata"]["device"] == "cpu"
  assert payload["metadata"]["devices"]
  assert payload["flower_simulation"]["status"] == "not measured"


def test_quick_timing_rows(quick_run):
  payload, _ = quick_run
  timing = payload["seconds_per_round"]
  assert [r["clients_per_round"] for r in timing["mlp"]] == [4]
  assert [r["clients_per_round"] for r in timing["cnn"]] == [4]
  for rows in timing.values():
    for row in rows:
      compiled = row["compiled"]["median_seconds"]
      assert compiled > 0
      fastest = row["compiled"]["min_seconds"]
      assert fastest <= compiled
      for way in ("compiled", "compiled_sharded", "loop", "fedjax_loop"):
        assert row[way]["median_cpu_seconds"] > 0, way
      sharded = row["compiled_sharded"]
      assert row["num_devices"] == 2
      for way in ("loop", "fedjax_loop"):
        for engine, suffix in ((row["compiled"], ""), (sharded, "_sharded")):
          ratio = row[way]["median_seconds"] / engine["median_seconds"]
          np.testing.assert_allclose(
            row[f"{way}{suffix}_ratio"], ratio, rtol=1e-9
          )
          min_ratio = row[way]["min_seconds"] / engine["min_seconds"]
          np.testing.assert_allclose(
            row[f"{way}{suffix}_min_ratio"], min_ratio, rtol=1e-9
          )
      # Round 1 of every way gives the same parameters.
      for way in ("compiled_sharded", "loop", "fedjax_loop"):
        assert row[f"{way}_max_abs_diff"] < 1e-4, way


def test_quick_memory_within_budget(quick_run):
  payload, _ = quick_run
  memory = payload["memory"]
  assert memory["budget_mb"] == QUICK_BUDGET_MB
  rows = memory["rows"]
  assert [r["clients_per_round"] for r in rows] == [16, 64]
  for row in rows:
    assert row["within_budget"]
    assert row["chunked"]["peak_bytes"] <= QUICK_BUDGET_MB * 2**20
    assert 1 <= row["clients_per_chunk"] <= row["clients_per_round"]
    for label in ("chunked", "unchunked"):
      sizes = row[label]
      expected = (
        sizes["argument_bytes"]
        + sizes["output_bytes"]
        + sizes["temp_bytes"]
        - sizes["alias_bytes"]
      )
      assert sizes["peak_bytes"] == expected
  largest = rows[-1]
  assert (
    largest["unchunked"]["temp_bytes"] > 2 * largest["chunked"]["temp_bytes"]
  )


def test_quick_flops_arithmetic(quick_run):
  payload, _ = quick_run
  flops = payload["flops"]
  steps = payload["settings"]["num_local_steps"]
  peak = flops["matmul_peak"]
  np.testing.assert_allclose(
    peak["flops_per_second"],
    2 * peak["size"] ** 3 / peak["best_seconds"],
    rtol=1e-9,
  )
  timing = {
    r["clients_per_round"]: r for r in payload["seconds_per_round"]["cnn"]
  }
  for row in flops["cnn"]["rows"]:
    clients = row["clients_per_round"]
    expected = flops["cnn"]["local_step_flops"] * steps * clients
    np.testing.assert_allclose(row["round_flops"], expected, rtol=1e-9)
    seconds = timing[clients]["compiled"]["median_seconds"]
    np.testing.assert_allclose(
      row["flops_per_second"], expected / seconds, rtol=1e-9
    )
    np.testing.assert_allclose(
      row["fraction_of_matmul_peak"],
      row["flops_per_second"] / peak["flops_per_second"],
      rtol=1e-9,
    )
    sharded_seconds = timing[clients]["compiled_sharded"]["median_seconds"]
    np.testing.assert_allclose(
      row["sharded_flops_per_second"], expected / sharded_seconds, rtol=1e-9
    )


def test_quick_prints_tables(quick_run):
  payload, stdout = quick_run
  for table in payload["tables"].values():
    assert table in stdout
  assert "Command: python" in stdout
  # No quick cohort has 1000 clients, so the target is not checked.
  assert payload["target"]["ratio"] is None


def test_gpu_without_gpu_fails_clearly():
  if any(d.platform == "gpu" for d in jax.devices()):
    pytest.skip("this machine has a GPU")
  result = _run_script("--device=gpu", "--quick", "--output=/dev/null")
  assert result.returncode != 0
  assert "--device=gpu but JAX found no GPU" in result.stderr
