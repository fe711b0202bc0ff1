"""Scalar metrics as JSON lines and TensorBoard events.

`MetricWriter` appends one JSON object per round to `<workdir>/metrics.jsonl`
(a resumed run continues the same file) and writes the same scalars as
TensorBoard summaries under `<workdir>/tensorboard` with tensorboardX, which
needs no TensorFlow. NaN and infinite values are written to JSON as null.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

from tensorboardX import SummaryWriter


def flatten(scalars: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
  """Flattens nested dicts with "/" between keys."""
  flat = {}
  for key, value in scalars.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(flatten(value, name + "/"))
    else:
      flat[name] = value
  return flat


def _json_value(value: Any) -> Any:
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    value = float(value) if isinstance(value, float) else int(value)
    if isinstance(value, float) and not math.isfinite(value):
      return None
    return value
  if value is None or isinstance(value, (str, bool)):
    return value
  as_float = float(value)  # numpy and jax scalars.
  return as_float if math.isfinite(as_float) else None


class MetricWriter:
  """Writes per-round scalars to JSON lines and TensorBoard.

  Args:
    workdir: Directory that receives `metrics.jsonl` and `tensorboard/`.
  """

  def __init__(self, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self._jsonl = open(self.jsonl_path, "a")
    self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Writes `scalars` (nested dicts allowed) for round `step`."""
    flat = flatten(scalars)
    record = {"round": int(step)}
    record.update({k: _json_value(v) for k, v in flat.items()})
    self._jsonl.write(json.dumps(record, sort_keys=True) + "\n")
    for name, value in record.items():
      if name != "round" and isinstance(value, (int, float)):
        self._tensorboard.add_scalar(name, value, global_step=int(step))

  def flush(self) -> None:
    self._jsonl.flush()
    self._tensorboard.flush()

  def close(self) -> None:
    self._jsonl.close()
    self._tensorboard.close()

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def read_jsonl(path: str) -> list[dict]:
  """Reads the records of a `metrics.jsonl` file, in order."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
