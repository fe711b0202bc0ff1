"""The Flower ClientApp: one site's part of every round.

Each SuperNode is one site. It names its client with `--node-config
'partition-id=K'`, K being the index into the dataset's client names (for
Fed-Heart-Disease: 0 Cleveland, 1 Hungary, 2 Switzerland, 3 VA Long
Beach). It may point at its own copy of the data with
`data-path="/site/file"`.
The ClientApp loads only that site's rows (`sites.load_site_data`).

Messages it handles:
  * "query": reply with the site's `SiteSummary` (row count, feature sums
    and sums of squares, label histogram, test rows);
  * "train": rebuild the algorithm from the config and the `Federation`
    in the message, standardize and pad its rows as the simulation does,
    run the jitted `pieces.client` on the broadcast and reply with the
    `summed` tree only. The site's per-client row (SCAFFOLD's control
    variate, an error-feedback residual) is read from and written back to
    the SuperNode's `context.state` and never leaves the site.

Flower starts a new ClientApp process for every message, so each round
imports JAX, reads the site's data and compiles the client piece again.
"""

from __future__ import annotations

import jax
import numpy as np
from absl import logging
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedjax_med.distributed.flower import federation as federation_lib
from fedjax_med.distributed.flower import records, sites

app = ClientApp()

_ROW_KEY = "fedjax-med-client-row"


def _load_site(msg: Message, context: Context):
  setup = msg.content["config"]
  config = federation_lib.load_config(
    str(setup["config-path"]), str(setup["config-overrides"])
  )
  if "partition-id" not in context.node_config:
    raise ValueError(
      "this SuperNode has no partition-id; start it with --node-config "
      "'partition-id=K', K being its site's index in the dataset."
    )
  client_id = int(context.node_config["partition-id"])
  data_path = context.node_config.get("data-path") or None
  pooled = bool(setup.get("simulation-data", False))
  data = sites.load_site_data(config.data, client_id, data_path, pooled=pooled)
  return config, client_id, data, pooled


# Under Flower's simulation engine one process serves many messages; keep
# the last world and its compiled pieces so that rounds do not recompile.
# A deployment starts a new process per message, so there it is rebuilt.
_WORLD_CACHE: dict = {}


def _site_world(config, federation, federation_record, pooled):
  key = (
    config.to_json_best_effort(),
    pooled,
    tuple(
      (name, federation_record[name].numpy().tobytes())
      for name in sorted(federation_record.keys())
    ),
  )
  if key not in _WORLD_CACHE:
    _WORLD_CACHE.clear()
    world = federation_lib.build_world(config, federation, pooled=pooled)
    _WORLD_CACHE[key] = (
      world,
      jax.jit(world.pieces.client),
      jax.jit(world.pieces.update_row),
    )
  return _WORLD_CACHE[key]


@app.query()
def query(msg: Message, context: Context) -> Message:
  """Replies with the aggregates of this site's training rows."""
  config, client_id, data, pooled = _load_site(msg, context)
  info = sites.dataset_info(config.data, pooled=pooled)
  summary = federation_lib.summarize_site(client_id, data, info.num_classes)
  content = RecordDict({"summary": federation_lib.summary_to_record(summary)})
  return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
  """Runs this site's client piece on the broadcast."""
  config, client_id, data, pooled = _load_site(msg, context)
  expected = int(msg.content["config"]["client-id"])
  if expected != client_id:
    raise ValueError(
      f"the server sent client {expected}'s work to the SuperNode with "
      f"partition-id={client_id}; give every SuperNode its own partition-id."
    )
  federation = federation_lib.federation_from_record(msg.content["federation"])
  world, client, update_row = _site_world(
    config, federation, msg.content["federation"], pooled
  )
  pieces = world.pieces
  batch = federation_lib.site_batch(config, data, federation)

  start = jax.eval_shape(pieces.begin, world.state, world.run_key)
  broadcast = records.record_to_tree(msg.content["broadcast"], start.broadcast)
  client_id_array = np.int32(client_id)
  if _ROW_KEY in context.state:
    template = jax.eval_shape(pieces.client_row, world.state, client_id_array)
    row = records.record_to_tree(context.state[_ROW_KEY], template)
  else:
    row = pieces.client_row(world.state, client_id_array)

  out = client(broadcast, batch, client_id_array, row)
  row = update_row(row, out.per_client)
  context.state[_ROW_KEY] = records.tree_to_record(row)
  logging.info(
    "Site %d trained round %d on %d rows.",
    client_id,
    int(msg.content["config"]["round"]),
    int(batch.num_examples),
  )
  content = RecordDict(
    {
      "summed": records.tree_to_record(out.summed),
      "metrics": MetricRecord({"num-examples": int(batch.num_examples)}),
    }
  )
  return Message(content=content, reply_to=msg)
