"""The Flower apps' shared pieces, checked without a network."""

import pathlib

import jax
import numpy as np
import pytest

pytest.importorskip("flwr")

from fedjax_med.distributed import site_rounds  # noqa: E402
from fedjax_med.distributed.flower import federation as federation_lib  # noqa: E402
from fedjax_med.distributed.flower import records, sites  # noqa: E402
from tests.distributed.reference import simulate  # noqa: E402

CONFIG = pathlib.Path(__file__).parents[2] / "configs" / "fed_heart_disease.py"


def _federation(config):
  info = sites.dataset_info(config.data)
  site_data = [
    sites.load_site_data(config.data, k) for k in range(len(info.client_names))
  ]
  summaries = [
    federation_lib.summarize_site(k, d, info.num_classes)
    for k, d in enumerate(site_data)
  ]
  # The summaries travel as records; use what arrives.
  summaries = [
    federation_lib.summary_from_record(federation_lib.summary_to_record(s))
    for s in summaries
  ]
  federation = federation_lib.federate(summaries, len(info.client_names))
  record = federation_lib.federation_to_record(federation)
  return site_data, federation_lib.federation_from_record(record)


@pytest.mark.parametrize("algorithm", ["fedavg", "scaffold"])
def test_sites_reproduce_simulation(algorithm):
  config = federation_lib.load_config(
    str(CONFIG), f"num_rounds=3 algorithm.name={algorithm}"
  )
  data, expected, _ = simulate(config)
  site_data, federation = _federation(config)
  world = federation_lib.build_world(config, federation)
  batches = {
    k: federation_lib.site_batch(config, d, federation)
    for k, d in enumerate(site_data)
  }
  # Each site's padded, standardized rows are the simulation's rows.
  for k, batch in batches.items():
    np.testing.assert_array_equal(batch.x, data.train.x[k])
    np.testing.assert_array_equal(batch.y, data.train.y[k])
    assert int(batch.num_examples) == int(data.train.num_examples[k])

  pieces = site_rounds.jit_pieces(world.pieces)
  rows = {k: pieces.client_row(world.state, np.int32(k)) for k in batches}
  state = world.state
  for r in range(config.num_rounds):
    start = pieces.begin(state, jax.random.fold_in(world.run_key, r))
    # The broadcast and the replies cross the wire as records.
    broadcast = records.record_to_tree(
      records.tree_to_record(start.broadcast), start.broadcast
    )
    summed = []
    for k in site_rounds.cohort_members(start.cohort):
      out = pieces.client(broadcast, batches[k], np.int32(k), rows[k])
      rows[k] = pieces.update_row(rows[k], out.per_client)
      summed.append(
        records.record_to_tree(records.tree_to_record(out.summed), out.summed)
      )
    state, _ = pieces.end(state, start, site_rounds.sum_trees(summed), None)

  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    world.algorithm.global_variables(state),
    expected,
  )


def test_record_rejects_other_shape():
  tree = {"w": np.zeros((2, 3), np.float32)}
  record = records.tree_to_record(tree)
  with pytest.raises(ValueError, match=r"\['w'\] arrived with shape \(2, 3\)"):
    records.record_to_tree(record, {"w": np.zeros((3, 2), np.float32)})
  with pytest.raises(ValueError, match=r"lacks the array \['b'\]"):
    records.record_to_tree(record, {**tree, "b": np.zeros(1, np.float32)})


def test_federate_rejects_repeated_site():
  config = federation_lib.load_config(str(CONFIG))
  info = sites.dataset_info(config.data)
  data = sites.load_site_data(config.data, 0)
  summary = federation_lib.summarize_site(0, data, info.num_classes)
  with pytest.raises(ValueError, match=r"client ids \[0, 0\]"):
    federation_lib.federate([summary, summary], 2)


def test_undeployable_algorithm_is_named():
  config = federation_lib.load_config(str(CONFIG), "algorithm.name=afl")
  _, federation = _federation(config)
  with pytest.raises(ValueError, match="'afl' does not split its round"):
    federation_lib.build_world(config, federation)


@pytest.mark.parametrize(
  "overrides, message",
  [
    ("privacy.mode=example", "server could remove"),
    ("privacy.secure_aggregation=True", "would hold every pairwise mask"),
    ("algorithm.name=pooled", "simulation baseline"),
  ],
)
def test_deployment_rejects_simulated_privacy(overrides, message):
  config = federation_lib.load_config(str(CONFIG), overrides)
  with pytest.raises(ValueError, match=message):
    federation_lib.check_deployable(config)
