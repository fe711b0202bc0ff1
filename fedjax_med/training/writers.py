"""Scalar metrics as JSON lines and TensorBoard events.

`MetricWriter` appends one JSON object per round to `<workdir>/metrics.jsonl`
and writes the same scalars as TensorBoard summaries under
`<workdir>/tensorboard` with tensorboardX, which needs no TensorFlow. The JSON
file is opened in append mode, so a resumed run continues it. NaN and
infinite values are written to JSON as null (plain JSON has no NaN) and left
out of TensorBoard.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging
from tensorboardX import SummaryWriter


def flatten(scalars: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Flattens nested dicts, joining keys with "/".

  For example `{"eval": {"cleveland": {"accuracy": 0.8}}}` becomes
  `{"eval/cleveland/accuracy": 0.8}`. Two paths that flatten to the same key
  raise a ValueError.
  """
  flat = {}
  for key, value in scalars.items():
    name = f"{prefix}{key}"
    items = (
      flatten(value, name + "/").items()
      if isinstance(value, Mapping)
      else [(name, value)]
    )
    for flat_name, flat_value in items:
      if flat_name in flat:
        raise ValueError(f"Two scalars flatten to the same key {flat_name!r}.")
      flat[flat_name] = flat_value
  return flat


def _to_number(name: str, value: Any) -> int | float | None:
  """Converts a Python, numpy or jax scalar to an int, float or None."""
  if value is None:
    return None
  array = np.asarray(value)
  if array.shape != () or array.dtype.kind not in "biuf":
    raise TypeError(
      f"scalar {name!r} is {value!r} of type {type(value).__name__}; "
      "write_scalars takes numbers or 0-d numeric arrays."
    )
  if array.dtype.kind in "biu":
    return int(array)
  return float(array)


def _drop_partial_last_line(path: str) -> None:
  """Removes an incomplete last line, left by a run killed mid-write."""
  if not os.path.exists(path) or os.path.getsize(path) == 0:
    return
  with open(path, "rb+") as f:
    content = f.read()
    if content.endswith(b"\n"):
      return
    keep = content.rfind(b"\n") + 1
    logging.warning(
      "%s ends with an incomplete line of %d bytes, from a run that stopped "
      "while writing; removing it before appending.",
      path,
      len(content) - keep,
    )
    f.truncate(keep)


class MetricWriter:
  """Writes per-round scalars to JSON lines and TensorBoard.

  Each call of `write_scalars` appends one line `{"round": step, ...}` to
  `<workdir>/metrics.jsonl`, flushed to the operating system at the end of
  the line, and adds each number as a TensorBoard scalar at `step`.

  NOTE: A run resumed from a checkpoint older than its last written round
  writes those rounds again, so `metrics.jsonl` can contain a round twice.
  The later line is the one from the resumed run.

  Args:
    workdir: Directory that receives `metrics.jsonl` and `tensorboard/`.
      It is created if missing.
  """

  def __init__(self, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self.tensorboard_dir = os.path.join(workdir, "tensorboard")
    _drop_partial_last_line(self.jsonl_path)
    self._jsonl = open(self.jsonl_path, "a", buffering=1)
    # tensorboardX 2.6.5 names event files by the second and host only and
    # opens them with "wb". Without a unique suffix, a run resumed within
    # the same second would erase the earlier file.
    self._tensorboard = SummaryWriter(
      self.tensorboard_dir, filename_suffix=f".{uuid.uuid4().hex[:12]}"
    )

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Writes `scalars` for round `step`.

    Args:
      step: Round number; the TensorBoard step and the "round" field.
      scalars: A mapping from names to numbers (Python, numpy or 0-d jax
        arrays), to None for a missing value, or to nested mappings of
        these, which are flattened with "/".
    """
    flat = flatten(scalars)
    if "round" in flat:
      raise ValueError(
        "scalars contain the key 'round', which is reserved for the step; "
        "rename it."
      )
    numbers = {name: _to_number(name, value) for name, value in flat.items()}

    record = {"round": int(step)}
    for name, number in numbers.items():
      finite = number is not None and math.isfinite(number)
      record[name] = number if finite else None
    self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")

    # TensorBoard gets finite values only: an undefined metric (AUROC at a
    # site whose test rows hold one class) has no point to draw, and
    # tensorboardX would log a warning for every NaN.
    for name, number in record.items():
      if name != "round" and number is not None:
        self._tensorboard.add_scalar(name, number, global_step=int(step))

  def flush(self) -> None:
    """Flushes both outputs to disk."""
    self._jsonl.flush()
    self._tensorboard.flush()

  def close(self) -> None:
    """Flushes and closes both outputs."""
    self._jsonl.close()
    self._tensorboard.close()

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def read_jsonl(path: str) -> list[dict]:
  """Reads the records of a `metrics.jsonl` file, in file order.

  Values written as null (NaN, infinity or None) are read back as None. A
  last line without a newline, left by a run that stopped while writing, is
  skipped with a warning.

  Raises:
    FileNotFoundError: If `path` does not exist.
    ValueError: If any complete line is not valid JSON.
  """
  with open(path) as f:
    lines = f.read().split("\n")
  # After the final newline, split leaves "" or an incomplete line.
  complete, last = lines[:-1], lines[-1]
  if last.strip():
    logging.warning(
      "Skipping the incomplete last line of %s: %r", path, last[:80]
    )

  records = []
  for line_number, line in enumerate(complete, start=1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as error:
      raise ValueError(
        f"{path}:{line_number} is not valid JSON ({error}); fix or delete "
        "that line."
      ) from error
  return records
