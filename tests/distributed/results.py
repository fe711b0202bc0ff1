"""Runs Python in a fresh process and reads its one `RESULT {json}` line.

The distributed tests need fresh processes because JAX fixes its device
count, and the distributed runtime, once its backend starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
PREFIX = "RESULT "


def parse_result(returncode: int, stdout: str, stderr: str) -> Any:
  """Returns the JSON of the process's single `RESULT` line."""
  assert returncode == 0, stderr[-4000:]
  lines = [line for line in stdout.splitlines() if line.startswith(PREFIX)]
  assert len(lines) == 1, stdout[-4000:]
  return json.loads(lines[0][len(PREFIX) :])


def run_python(
  args: list[str], env: dict[str, str] | None = None, timeout: float = 600
) -> Any:
  """Runs `python *args` from the repository root and parses its result."""
  completed = subprocess.run(
    [sys.executable, *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )
  return parse_result(completed.returncode, completed.stdout, completed.stderr)
