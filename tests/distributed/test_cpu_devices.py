"""`request_cpu_devices` gives a CPU run one device per shard.

Each case runs in a fresh process, because the CPU device count is fixed
once JAX's backend starts.
"""

import os
import textwrap

import pytest

from tests.distributed.results import run_python


def _run(code: str, xla_flags: str = ""):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags}
  return run_python(["-c", textwrap.dedent(code)], env=env, timeout=300)


def test_request_before_start_makes_the_devices():
  result = _run("""
    import json, jax
    from fedjax_med.core import sharding
    first = sharding.request_cpu_devices(3)
    smaller = sharding.request_cpu_devices(2)
    print("RESULT " + json.dumps([first, smaller, jax.device_count()]))
  """)
  first, smaller, count = result
  assert first is True
  # 3 devices already cover a request for 2.
  assert smaller is False
  assert count == 3


def test_request_after_start_is_left_out():
  result = _run("""
    import json, jax
    from fedjax_med.core import sharding
    count = jax.device_count()
    requested = sharding.request_cpu_devices(2)
    try:
      sharding.client_mesh(2)
      error = ""
    except ValueError as e:
      error = str(e)
    print("RESULT " + json.dumps([count, requested, error]))
  """)
  count, requested, error = result
  assert count == 1
  assert requested is False
  assert "request_cpu_devices(2)" in error


def test_xla_flags_take_precedence():
  result = _run(
    """
    import json, jax
    from fedjax_med.core import sharding
    requested = sharding.request_cpu_devices(2)
    print("RESULT " + json.dumps([requested, jax.device_count()]))
    """,
    xla_flags="--xla_force_host_platform_device_count=4",
  )
  requested, count = result
  assert requested is False
  assert count == 4


def test_too_few_forced_devices_names_xla_flags():
  result = _run(
    """
    import json
    from fedjax_med.core import sharding
    sharding.request_cpu_devices(2)
    try:
      sharding.client_mesh(2)
      error = ""
    except ValueError as e:
      error = str(e)
    print("RESULT " + json.dumps(error))
    """,
    xla_flags="--xla_force_host_platform_device_count=1",
  )
  assert "cohort.num_devices=2 exceeds the 1 cpu devices" in result
  assert "XLA_FLAGS sets --xla_force_host_platform_device_count=1" in result


@pytest.mark.slow
def test_experiment_on_two_cpu_devices_matches_one(tmp_path):
  # The first run requests 2 devices before JAX starts. The second runs the
  # same config on one device in the same process.
  result = _run(f"""
    import json, jax
    from configs import fed_heart_disease
    from fedjax_med.training.experiment import run_experiment
    finals = []
    for devices in (2, 0):
      config = fed_heart_disease.get_config()
      config.num_rounds = 4
      config.eval_every = 4
      config.checkpoint_every = 4
      config.progress_bar = False
      config.cohort.num_devices = devices
      final = run_experiment(config, "{tmp_path}/devices_" + str(devices))
      finals.append(final["per_client"])
    print("RESULT " + json.dumps([jax.device_count(), finals]))
  """)
  count, (sharded, single) = result
  assert count == 2
  assert sharded.keys() == single.keys()
  for site in single:
    for name in ("loss", "accuracy"):
      assert sharded[site][name] == pytest.approx(
        single[site][name], rel=1e-5, abs=1e-6
      ), (site, name)
