"""MetricWriter: JSON lines and TensorBoard events that read back exactly."""

import json
import math
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from fedjax_med.training.writers import MetricWriter, flatten, read_jsonl


def _reject_constant(name):
  raise ValueError(f"{name} is not valid JSON")


def _read_event_records(path):
  """Parses a TFRecord file of Event protos, checking both CRCs."""
  events = []
  with open(path, "rb") as f:
    while header := f.read(8):
      (length,) = struct.unpack("<Q", header)
      (header_crc,) = struct.unpack("<I", f.read(4))
      assert header_crc == masked_crc32c(header)
      data = f.read(length)
      (data_crc,) = struct.unpack("<I", f.read(4))
      assert data_crc == masked_crc32c(data)
      events.append(event_pb2.Event.FromString(data))
  return events


def _tensorboard_scalars(workdir):
  event_files = sorted((workdir / "tensorboard").glob("events.out.tfevents*"))
  scalars = {}
  for path in event_files:
    for event in _read_event_records(path):
      for value in event.summary.value:
        scalars[(value.tag, event.step)] = value.simple_value
  return scalars


ROUNDS = [
  (1, {"train": {"loss": 0.75}, "eval": {"cleveland": {"accuracy": 0.5}}}),
  (2, {"train": {"loss": np.float32(0.5)}, "eval/cleveland/accuracy": 0.625}),
  (
    3,
    {"train": {"loss": jnp.asarray(0.25)}, "eval/cleveland/accuracy": 0.875},
  ),
]


def test_jsonl_reads_back_written_values(tmp_path):
  with MetricWriter(str(tmp_path)) as writer:
    for step, scalars in ROUNDS:
      writer.write_scalars(step, scalars)
  records = read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert records == [
    {"round": 1, "train/loss": 0.75, "eval/cleveland/accuracy": 0.5},
    {"round": 2, "train/loss": 0.5, "eval/cleveland/accuracy": 0.625},
    {"round": 3, "train/loss": 0.25, "eval/cleveland/accuracy": 0.875},
  ]


def test_tensorboard_contains_scalars(tmp_path):
  with MetricWriter(str(tmp_path)) as writer:
    for step, scalars in ROUNDS:
      writer.write_scalars(step, scalars)
  scalars = _tensorboard_scalars(tmp_path)
  assert scalars == {
    ("train/loss", 1): 0.75,
    ("eval/cleveland/accuracy", 1): 0.5,
    ("train/loss", 2): 0.5,
    ("eval/cleveland/accuracy", 2): 0.625,
    ("train/loss", 3): 0.25,
    ("eval/cleveland/accuracy", 3): 0.875,
  }


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.nan])
def test_non_finite_written_as_null(tmp_path, value):
  with MetricWriter(str(tmp_path)) as writer:
    writer.write_scalars(1, {"auroc": value, "accuracy": 1.0})
  text = (tmp_path / "metrics.jsonl").read_text()
  record = json.loads(text, parse_constant=_reject_constant)
  assert record == {"round": 1, "auroc": None, "accuracy": 1.0}
  tensorboard_scalars = _tensorboard_scalars(tmp_path)
  assert ("auroc", 1) not in tensorboard_scalars
  assert tensorboard_scalars[("accuracy", 1)] == 1.0


def test_ints_stay_ints(tmp_path):
  with MetricWriter(str(tmp_path)) as writer:
    writer.write_scalars(4, {"num_examples": np.int64(303), "flag": True})
  (record,) = read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert record == {"round": 4, "num_examples": 303, "flag": 1}
  assert isinstance(record["num_examples"], int)


def test_resumed_run_appends(tmp_path):
  with MetricWriter(str(tmp_path)) as writer:
    writer.write_scalars(1, {"loss": 1.0})
    writer.write_scalars(2, {"loss": 0.5})
  with MetricWriter(str(tmp_path)) as writer:
    writer.write_scalars(3, {"loss": 0.25})
  records = read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["round"] for r in records] == [1, 2, 3]
  assert [r["loss"] for r in records] == [1.0, 0.5, 0.25]
  scalars = _tensorboard_scalars(tmp_path)
  assert scalars[("loss", 1)] == 1.0
  assert scalars[("loss", 3)] == 0.25


def test_line_written_before_flush(tmp_path):
  writer = MetricWriter(str(tmp_path))
  writer.write_scalars(1, {"loss": 1.0})
  # Line buffering hands each record to the OS when its line ends.
  assert read_jsonl(str(tmp_path / "metrics.jsonl")) == [
    {"round": 1, "loss": 1.0}
  ]
  writer.close()


def test_incomplete_last_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"round": 1, "loss": 1.0}\n{"round": 2, "lo')
  assert read_jsonl(str(path)) == [{"round": 1, "loss": 1.0}]
  with MetricWriter(str(tmp_path)) as writer:
    writer.write_scalars(2, {"loss": 0.5})
  assert read_jsonl(str(path)) == [
    {"round": 1, "loss": 1.0},
    {"round": 2, "loss": 0.5},
  ]


def test_read_rejects_bad_middle_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"round": 1}\nnot json\n{"round": 3}\n')
  with pytest.raises(ValueError, match="metrics.jsonl:2 is not valid JSON"):
    read_jsonl(str(path))


def test_rejects_round_key(tmp_path):
  with MetricWriter(str(tmp_path)) as writer:
    with pytest.raises(ValueError, match="'round'"):
      writer.write_scalars(1, {"round": 3})


def test_rejects_string_value(tmp_path):
  with MetricWriter(str(tmp_path)) as writer:
    with pytest.raises(TypeError, match="'name'"):
      writer.write_scalars(1, {"name": "cleveland"})


def test_rejects_vector_value(tmp_path):
  with MetricWriter(str(tmp_path)) as writer:
    with pytest.raises(TypeError, match="'loss'"):
      writer.write_scalars(1, {"loss": np.ones(3)})


def test_flatten_nested_keys():
  nested = {"eval": {"cleveland": {"accuracy": 0.8}, "pooled": {"loss": 1}}}
  assert flatten(nested) == {
    "eval/cleveland/accuracy": 0.8,
    "eval/pooled/loss": 1,
  }


def test_flatten_rejects_collision():
  with pytest.raises(ValueError, match="'eval/loss'"):
    flatten({"eval/loss": 1.0, "eval": {"loss": 2.0}})
