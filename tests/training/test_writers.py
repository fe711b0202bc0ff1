"""The metric writer's JSON lines and TensorBoard events, and the plots."""

import math

from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import RecordWriter  # noqa: F401

from fedjax_med.training import plotting, writers


def _read_event_scalars(path):
  # TFRecord framing: length (8 bytes), length CRC (4), data, data CRC (4).
  scalars = {}
  with open(path, "rb") as f:
    while header := f.read(8):
      length = int.from_bytes(header, "little")
      f.read(4)
      event = event_pb2.Event.FromString(f.read(length))
      f.read(4)
      for value in event.summary.value:
        scalars[(value.tag, event.step)] = value.simple_value
  return scalars


def test_writer_round_trips_scalars(tmp_path):
  with writers.MetricWriter(str(tmp_path)) as writer:
    writer.write_scalars(1, {"train": {"loss": 0.5}, "acc": 0.75})
    writer.write_scalars(2, {"train": {"loss": float("nan")}, "acc": 0.8})
  records = writers.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert records[0] == {"round": 1, "train/loss": 0.5, "acc": 0.75}
  assert records[1]["train/loss"] is None
  event_files = list((tmp_path / "tensorboard").glob("events.out.tfevents*"))
  assert len(event_files) == 1
  scalars = _read_event_scalars(event_files[0])
  assert scalars[("train/loss", 1)] == 0.5
  assert math.isclose(scalars[("acc", 2)], 0.8, rel_tol=1e-6)


def test_writer_appends_on_resume(tmp_path):
  with writers.MetricWriter(str(tmp_path)) as writer:
    writer.write_scalars(1, {"a": 1.0})
  with writers.MetricWriter(str(tmp_path)) as writer:
    writer.write_scalars(2, {"a": 2.0})
  records = writers.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["round"] for r in records] == [1, 2]


def test_plot_writes_png(tmp_path):
  records = [
    {"round": r, "eval/A/accuracy": 0.5 + r / 10, "eval/pooled/accuracy": 0.6}
    for r in range(1, 4)
  ]
  path = tmp_path / "acc.png"
  plotting.plot_client_metrics(records, "accuracy", str(path), ["A", "B"])
  assert path.read_bytes().startswith(b"\x89PNG")
  assert path.stat().st_size > 1000
