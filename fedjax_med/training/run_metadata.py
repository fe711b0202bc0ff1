"""What a benchmark or run records about itself: command, versions, machine.

Every benchmark script writes this next to its figures, so that a number in
docs/benchmarks.md can be traced to the command, the library versions and
the machine that produced it.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
from collections.abc import Sequence

import jax

DEFAULT_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy")


def cpu_model() -> str:
  """Returns the CPU model from /proc/cpuinfo, or the platform's name."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def collect_metadata(
  command: str, packages: Sequence[str] = DEFAULT_PACKAGES
) -> dict:
  """Returns the command, date, package versions and machine of this run.

  Args:
    command: The command line that produced the figures.
    packages: Distribution names whose versions to record (None when a
      package is not installed).
  """
  return {
    "command": command,
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds"
    ),
    "versions": {
      "python": platform.python_version(),
      **{package: _version(package) for package in packages},
    },
    "machine": {
      "platform": platform.platform(),
      "machine": platform.machine(),
      "cpu_model": cpu_model(),
      "cpu_count": os.cpu_count(),
      "cpu_affinity_count": len(os.sched_getaffinity(0)),
      "jax_backend": jax.default_backend(),
      "jax_devices": [str(device) for device in jax.devices()],
      "load_average": list(os.getloadavg()),
    },
  }
