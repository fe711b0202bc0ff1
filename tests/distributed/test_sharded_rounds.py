"""Rounds sharded over fake CPU devices match the one-device round."""

import jax
import numpy as np
import pytest

from fedjax_med.core import sharding
from tests.distributed.results import run_python

ALGORITHMS = ("fedavg", "scaffold", "newton", "dpsgd")


@pytest.fixture(scope="module")
def sharded_results():
  return run_python(["-m", "tests.distributed.sharded_rounds_check"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("num_devices", [4, 8])
def test_sharded_round_matches_one_device(sharded_results, name, num_devices):
  assert sharded_results["device_count"] == 8
  single = sharded_results[f"{name}/1"]
  sharded = sharded_results[f"{name}/{num_devices}"]
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    single["params"],
    sharded["params"],
  )
  np.testing.assert_allclose(single["loss"], sharded["loss"], rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("num_devices", [1, 4, 8])
def test_sharded_round_compiles_once(sharded_results, num_devices):
  for name in ALGORITHMS:
    assert sharded_results[f"{name}/{num_devices}"]["traces"] == 1, name


def test_client_mesh_rejects_too_many_devices():
  requested = jax.device_count() + 1
  with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
    sharding.client_mesh(requested)


def test_client_mesh_rejects_negative_count():
  with pytest.raises(ValueError, match="num_devices=-2"):
    sharding.client_mesh(-2)


def test_client_mesh_is_none_for_one_device():
  assert sharding.client_mesh(0) is None
  assert sharding.client_mesh(1) is None
