"""A cohort chunk size chosen from a memory budget.

A compiled round's peak memory per device is its inputs (the state and the
federated data), its outputs and its temporaries, less the inputs whose
buffers the outputs reuse (`Compiled.memory_analysis()`). Only the
temporaries depend on the chunk size: they grow about linearly with the
clients vmapped together (`clients_per_chunk`), and not with the cohort,
because `engine.map_cohort` keeps one chunk's intermediates live at a time.

`chunk_for_budget` measures the peak at two chunk sizes and follows the line
through them to a pick. It compiles the pick to check it, and for a few more
compilations refines it between the largest chunk known to fit and the
smallest known not to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from absl import logging
from jax.sharding import Mesh

from fedjax_med.core import sharding
from fedjax_med.core.algorithm import FederatedAlgorithm

# The second chunk size measured for the linear fit.
_PROBE_CHUNK = 8
# Compilations after the probe; the search stops earlier once the pick is
# within 1/8 of the smallest chunk known not to fit.
_MAX_SEARCH_STEPS = 4
MIB = 2**20


def compile_round(
  algorithm: FederatedAlgorithm,
  variables: Any,
  data: Any,
  mesh: Mesh | None = None,
) -> jax.stages.Compiled:
  """Compiles (does not run) one `algorithm.run_round`.

  Args:
    algorithm: The algorithm whose round is compiled.
    variables: The model's variables, or their `jax.ShapeDtypeStruct`s.
    data: The federated data the round trains on.
    mesh: The mesh the round shards its cohort over, or None.
  """
  key = jax.random.PRNGKey(0)
  state = jax.eval_shape(algorithm.init, key, variables)
  run_round = sharding.jit_round(algorithm.run_round, mesh)
  return run_round.lower(state, data, key).compile()


def peak_bytes(analysis: Any) -> int:
  """Peak memory per device of a compiled program, from its memory analysis.

  Inputs, outputs and temporaries are live together at the peak; inputs
  aliased to outputs count once.
  """
  return int(
    analysis.argument_size_in_bytes
    + analysis.output_size_in_bytes
    + analysis.temp_size_in_bytes
    - analysis.alias_size_in_bytes
  )


def round_peak_bytes(
  algorithm: FederatedAlgorithm,
  variables: Any,
  data: Any,
  mesh: Mesh | None = None,
) -> int:
  """Peak memory per device of one compiled `algorithm.run_round`."""
  compiled = compile_round(algorithm, variables, data, mesh)
  return peak_bytes(compiled.memory_analysis())


def chunk_for_budget(
  bytes_at: Callable[[int], int],
  capacity: int,
  budget_bytes: int,
) -> int:
  """Finds the largest chunk size whose round fits the memory budget.

  Args:
    bytes_at: Memory of a compiled round for a chunk size, such as
      `round_peak_bytes`.
    capacity: Cohort slots per device, the largest useful chunk.
    budget_bytes: Memory allowed per device.

  Raises:
    ValueError: If even one client per chunk exceeds the budget.
  """
  measured = {}

  def measure(chunk: int) -> int:
    if chunk not in measured:
      measured[chunk] = bytes_at(chunk)
    return measured[chunk]

  smallest = measure(1)
  if smallest > budget_bytes:
    raise ValueError(
      f"memory_budget_mb={budget_bytes / MIB:.1f} is below the "
      f"{smallest / MIB:.1f} MB per device that a round needs with one "
      "client per chunk (the state and data included); raise "
      "cohort.memory_budget_mb, or set it to 0 and choose "
      "cohort.clients_per_chunk yourself."
    )
  if capacity == 1:
    return 1

  # `lower` fits the budget; `upper` is the smallest chunk known not to.
  lower, upper = 1, capacity + 1
  probe = min(_PROBE_CHUNK, capacity)
  if measure(probe) <= budget_bytes:
    lower = probe
  else:
    upper = probe

  def next_chunk() -> int:
    # The line through two measured chunks, interpolated between `lower`
    # and `upper`, or extrapolated from chunks 1 and `lower`.
    a, b = (lower, upper) if upper <= capacity else (1, lower)
    if measure(b) <= measure(a):
      return upper - 1
    guess = a + int(
      (budget_bytes - measure(a)) * (b - a) // (measure(b) - measure(a))
    )
    return min(max(guess, lower + 1), upper - 1)

  for _ in range(_MAX_SEARCH_STEPS):
    if upper - lower <= max(1, lower // 8):
      break
    chunk = next_chunk()
    if measure(chunk) <= budget_bytes:
      lower = chunk
    else:
      upper = chunk
  chunk = lower
  logging.info(
    "cohort.memory_budget_mb=%.1f: clients_per_chunk=%d, with a peak of "
    "%.2f MB per device (%.2f MB at one client; %d compilations).",
    budget_bytes / MIB,
    chunk,
    measure(chunk) / MIB,
    smallest / MIB,
    len(measured),
  )
  return chunk
