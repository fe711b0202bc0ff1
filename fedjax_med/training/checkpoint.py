"""Orbax checkpoints of a whole run: algorithm state, run key and round.

Each checkpoint has two items: "state" (the pytree of arrays) and "metadata"
(a JSON dict, for host-side state such as the privacy accountant's), so the
metadata can be read before the algorithm that shapes the state is built.
Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a run that fails mid-save, or fails later, leaves the last
complete checkpoint in place.
"""

from __future__ import annotations

import logging as std_logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

PyTree = Any


class _QuietOrbaxFilter(std_logging.Filter):
  """Drops orbax's INFO records, which log every step of every save."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    from_orbax = f"{os.sep}orbax{os.sep}" in record.pathname
    return not (from_orbax and record.levelno < std_logging.WARNING)


def quiet_orbax_logging() -> None:
  """Hides orbax's per-save INFO logs; its warnings and errors still show."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietOrbaxFilter) for f in handler.filters):
    handler.addFilter(_QuietOrbaxFilter())


class Checkpointer:
  """Saves and restores a run's state, key and round in orbax checkpoints.

  Args:
    workdir: The run's directory.
    max_to_keep: Number of most recent checkpoints kept on disk.
  """

  def __init__(self, workdir: str, max_to_keep: int = 2):
    quiet_orbax_logging()
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self._manager = ocp.CheckpointManager(
      self.directory,
      item_handlers={
        "state": ocp.StandardCheckpointHandler(),
        "metadata": ocp.JsonCheckpointHandler(),
      },
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True
      ),
    )

  def latest_round(self) -> int | None:
    """Round of the newest complete checkpoint, or None if there is none."""
    return self._manager.latest_step()

  def save(
    self,
    round_index: int,
    state: PyTree,
    rng: jax.Array,
    metadata: dict[str, Any] | None = None,
  ) -> None:
    """Saves the state after `round_index` rounds and waits until written.

    Args:
      round_index: Rounds completed; the checkpoint's step.
      state: The algorithm state.
      rng: The run key.
      metadata: JSON-serializable host-side state, stored beside `state`.
    """
    item = {"state": state, "rng": rng, "round": round_index}
    self._manager.save(
      round_index,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(item),
        metadata=ocp.args.JsonSave(metadata or {}),
      ),
    )
    self._manager.wait_until_finished()

  def restore(
    self, round_index: int, state_like: PyTree, rng_like: jax.Array
  ) -> tuple[PyTree, jax.Array]:
    """Restores the checkpoint of `round_index` into the given structure."""
    abstract = jax.tree.map(
      ocp.utils.to_shape_dtype_struct,
      {"state": state_like, "rng": rng_like, "round": round_index},
    )
    restored = self._manager.restore(
      round_index,
      args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)),
    )
    return restored.state["state"], restored.state["rng"]

  def restore_metadata(self, round_index: int) -> dict[str, Any]:
    """Returns the JSON metadata saved with the checkpoint of `round_index`."""
    restored = self._manager.restore(
      round_index, args=ocp.args.Composite(metadata=ocp.args.JsonRestore())
    )
    return dict(restored.metadata or {})

  def close(self) -> None:
    self._manager.close()
