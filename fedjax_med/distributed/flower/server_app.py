"""The Flower ServerApp: drives an algorithm's rounds over the sites.

The run config (`[tool.flwr.app.config]`, or `flwr run --run-config`)
names the experiment:
  * `config-path`: a fedjax_med config file, e.g. configs/fed_heart_disease.py,
    at that path on the server and on every site;
  * `config-overrides`: `key=value` items as `--config.key=value` on
    scripts/train.py (`num_rounds=3 seed=1`);
  * `num-sites`: SuperNodes to wait for, one per client of the dataset;
  * `out-dir`: where the final model and the metrics are written ("" for
    nowhere);
  * `round-timeout`: seconds to wait for the sites' replies each round;
  * `simulation-data`: false in a deployment. True lets every party load
    the whole dataset and take its client's rows, for datasets without a
    per-site loader under Flower's simulation engine (`simulation.py`).

The loop waits for the SuperNodes, requests each one's `SiteSummary`
("query" message) and adds them up into a `Federation`. Every round it runs
`pieces.begin` here and sends the broadcast to the sampled sites ("train"
messages). It adds up their `summed` replies in float64 in cohort order and
runs `pieces.end` without per-client rows, which stay at the sites. Keys,
initial state and round keys follow the simulation (`World`), so the same
config and seed give the simulation's parameters up to float32 rounding.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import logging
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedjax_med.core.client import ClientBatch
from fedjax_med.distributed import site_rounds
from fedjax_med.distributed.flower import federation as federation_lib
from fedjax_med.distributed.flower import records

app = ServerApp()

_WAIT_POLL_SECONDS = 0.5


def _wait_for_nodes(grid: Grid, count: int, timeout: float) -> list[int]:
  deadline = time.monotonic() + timeout
  while True:
    nodes = sorted(grid.get_node_ids())
    if len(nodes) >= count:
      return nodes
    if time.monotonic() > deadline:
      raise TimeoutError(
        f"only {len(nodes)} of {count} SuperNodes connected within "
        f"{timeout:.0f} s; start one SuperNode per site or lower num-sites."
      )
    time.sleep(_WAIT_POLL_SECONDS)


def _exchange(
  grid: Grid, messages: list[Message], timeout: float
) -> list[Message]:
  replies = list(grid.send_and_receive(messages, timeout=timeout))
  for reply in replies:
    if reply.has_error():
      raise RuntimeError(
        f"SuperNode {reply.metadata.src_node_id} replied with error "
        f"{reply.error.code}: {reply.error.reason}"
      )
  if len(replies) != len(messages):
    raise TimeoutError(
      f"{len(replies)} of {len(messages)} sites replied within "
      f"{timeout:.0f} s; raise round-timeout or check the SuperNodes' logs."
    )
  return replies


def _summed_template(world, federation):
  """Shapes of one site's `summed` reply, without any site's data."""
  capacity = federation.capacity
  dtype = jax.tree.leaves(world.state.params)[0].dtype
  batch = ClientBatch(
    x=jax.ShapeDtypeStruct((capacity, *world.info.feature_shape), dtype),
    y=jax.ShapeDtypeStruct((capacity,), np.int32),
    num_examples=jax.ShapeDtypeStruct((), np.int32),
  )
  start = jax.eval_shape(world.pieces.begin, world.state, world.run_key)
  row = jax.eval_shape(world.pieces.client_row, world.state, np.int32(0))
  out = jax.eval_shape(
    world.pieces.client, start.broadcast, batch, np.int32(0), row
  )
  return out.summed


def _write_results(out_dir: str, variables, history: list[dict]) -> None:
  os.makedirs(out_dir, exist_ok=True)
  leaves, _ = jax.tree_util.tree_flatten_with_path(variables)
  np.savez(
    os.path.join(out_dir, "final_variables.npz"),
    **{jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves},
  )
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump(history, f, indent=1)


@app.main()
def main(grid: Grid, context: Context) -> None:
  """Runs `config.num_rounds` rounds of the configured algorithm."""
  run_server(grid, context.run_config)


def run_server(grid: Grid, run_config: dict) -> list[dict]:
  """Runs the rounds that `run_config` names over the grid's SuperNodes.

  Returns:
    Each round's metrics, with its wall-clock "seconds".
  """
  config = federation_lib.load_config(
    str(run_config["config-path"]),
    str(run_config.get("config-overrides", "")),
  )
  federation_lib.check_deployable(config)
  num_sites = int(run_config.get("num-sites", 4))
  timeout = float(run_config.get("round-timeout", 300))
  out_dir = str(run_config.get("out-dir", ""))
  pooled = bool(run_config.get("simulation-data", False))
  setup = ConfigRecord(
    {
      "config-path": str(run_config["config-path"]),
      "config-overrides": str(run_config.get("config-overrides", "")),
      "simulation-data": pooled,
    }
  )

  nodes = _wait_for_nodes(grid, num_sites, timeout)
  logging.info("%d SuperNodes connected: %s", len(nodes), nodes)
  queries = [
    Message(
      content=RecordDict({"config": setup}),
      dst_node_id=node,
      message_type="query",
    )
    for node in nodes
  ]
  node_of = {}
  summaries = []
  for reply in _exchange(grid, queries, timeout):
    summary = federation_lib.summary_from_record(reply.content["summary"])
    node_of[summary.client_id] = reply.metadata.src_node_id
    summaries.append(summary)
  federation = federation_lib.federate(summaries, num_sites)
  world = federation_lib.build_world(config, federation, pooled=pooled)
  pieces = site_rounds.jit_pieces(world.pieces)
  template = _summed_template(world, federation)
  federation_record = federation_lib.federation_to_record(federation)

  state = world.state
  history = []
  for round_index in range(config.num_rounds):
    began = time.monotonic()
    rng = jax.random.fold_in(world.run_key, round_index)
    start = pieces.begin(state, rng)
    members = site_rounds.cohort_members(start.cohort)
    if not members:
      raise ValueError(
        f"round {round_index} sampled no client; deployment needs a "
        "non-empty cohort every round (use cohort.sampling='uniform')."
      )
    broadcast = records.tree_to_record(start.broadcast)
    messages = [
      Message(
        content=RecordDict(
          {
            "config": ConfigRecord(
              {**setup, "round": round_index, "client-id": client_id}
            ),
            "federation": federation_record,
            "broadcast": broadcast,
          }
        ),
        dst_node_id=node_of[client_id],
        message_type="train",
      )
      for client_id in members
    ]
    replies = _exchange(grid, messages, timeout)
    client_of = {node: k for k, node in node_of.items()}
    by_client = {client_of[r.metadata.src_node_id]: r for r in replies}
    summed = site_rounds.sum_trees(
      [
        records.record_to_tree(by_client[k].content["summed"], template)
        for k in members
      ]
    )
    state, metrics = pieces.end(state, start, summed, None)
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    metrics["round"] = round_index + 1
    metrics["seconds"] = time.monotonic() - began
    history.append(metrics)
    logging.info(
      "Round %d: train_loss %.4f, %d sites, %.1f s",
      round_index + 1,
      metrics["train_loss"],
      len(members),
      metrics["seconds"],
    )

  if out_dir:
    _write_results(out_dir, world.algorithm.global_variables(state), history)
  return history
