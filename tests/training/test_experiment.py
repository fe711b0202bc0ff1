"""End-to-end tests of the experiment loop on Fed-Heart-Disease."""

import json
import math
import os

import jax
import numpy as np
import pytest

from configs import fed_heart_disease
from fedjax_med.training import experiment
from fedjax_med.training.checkpoint import Checkpointer
from fedjax_med.training.writers import read_jsonl


def _config(**overrides):
  config = fed_heart_disease.get_config()
  config.num_rounds = 4
  config.eval_every = 2
  config.checkpoint_every = 2
  config.progress_bar = False
  for dotted, value in overrides.items():
    section, _, field = dotted.rpartition(".")
    target = config
    for part in filter(None, section.split(".")):
      target = target[part]
    target[field] = value
  return config


def _checkpoint_params(workdir, round_index):
  checkpointer = Checkpointer(str(workdir))
  config = _config()
  data = experiment.load_data(config)
  model = experiment.build_model(config, data)
  from fedjax_med.algorithms.registry import build_algorithm

  algorithm = build_algorithm(config, model, data)
  key = jax.random.PRNGKey(0)
  state_like = algorithm.init(key, model.init(key, data.train.x[0, :1]))
  state, _ = checkpointer.restore(round_index, state_like, key)
  checkpointer.close()
  return state


def test_run_writes_every_output(tmp_path):
  final = experiment.run_experiment(_config(), str(tmp_path))
  saved = json.loads((tmp_path / "final_metrics.json").read_text())
  assert saved["rounds"] == 4
  assert saved["pooled_test_accuracy"] == pytest.approx(
    final["pooled_test_accuracy"]
  )
  assert set(saved["per_client"]) == {
    "Cleveland",
    "Hungary",
    "Switzerland",
    "VA Long Beach",
  }
  assert 0.5 < saved["pooled_test_accuracy"] <= 1.0
  records = read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["round"] for r in records] == [1, 2, 3, 4]
  assert "eval/pooled/accuracy" in records[1]
  assert "eval/pooled/accuracy" not in records[0]
  assert all(math.isfinite(r["train/train_loss"]) for r in records)
  events = os.listdir(tmp_path / "tensorboard")
  assert any(name.startswith("events.out.tfevents") for name in events)
  png = (tmp_path / "accuracy_per_site.png").read_bytes()
  assert png.startswith(b"\x89PNG")


def test_resume_equals_uninterrupted_run(tmp_path):
  straight = tmp_path / "straight"
  experiment.run_experiment(_config(num_rounds=6), str(straight))

  resumed = tmp_path / "resumed"
  experiment.run_experiment(
    _config(num_rounds=3, checkpoint_every=3), str(resumed)
  )
  experiment.run_experiment(
    _config(num_rounds=6, checkpoint_every=3), str(resumed), resume=True
  )
  a = _checkpoint_params(straight, 6)
  b = _checkpoint_params(resumed, 6)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert int(b.round) == 6
  records = read_jsonl(str(resumed / "metrics.jsonl"))
  assert [r["round"] for r in records] == [1, 2, 3, 4, 5, 6]


def test_existing_checkpoint_needs_resume(tmp_path):
  experiment.run_experiment(_config(num_rounds=2), str(tmp_path))
  with pytest.raises(ValueError, match="pass --resume"):
    experiment.run_experiment(_config(num_rounds=4), str(tmp_path))
  assert Checkpointer(str(tmp_path)).latest_round() == 2


def test_divergence_keeps_last_good_checkpoint(tmp_path):
  experiment.run_experiment(_config(num_rounds=2), str(tmp_path))
  before = _checkpoint_params(tmp_path, 2)
  diverging = _config(num_rounds=6, **{"client.learning_rate": 1e38})
  with pytest.raises(FloatingPointError, match="lower client.learning_rate"):
    experiment.run_experiment(diverging, str(tmp_path), resume=True)
  assert Checkpointer(str(tmp_path)).latest_round() == 2
  after = _checkpoint_params(tmp_path, 2)
  jax.tree.map(np.testing.assert_array_equal, before, after)


@pytest.mark.parametrize("name", ["pooled", "local"])
def test_baselines_run(tmp_path, name):
  final = experiment.run_experiment(
    _config(**{"algorithm.name": name}), str(tmp_path)
  )
  assert 0.5 < final["pooled_test_accuracy"] <= 1.0
  assert len(final["per_client"]) == 4
  if name == "local":
    assert set(final["per_training_site"]) == set(final["per_client"])


@pytest.mark.parametrize(
  "overrides, error, message",
  [
    ({"data.name": "mimic"}, ValueError, "mimic"),
    ({"model.name": "resnet"}, ValueError, "resnet"),
    ({"algorithm.name": "fedsgd"}, ValueError, "fedsgd"),
    (
      {"cohort.clients_per_round": 12},
      ValueError,
      "clients_per_round=12 exceeds the 4 clients in fed_heart_disease",
    ),
    ({"client.learning_rate": 0.0}, ValueError, "learning_rate=0.0"),
    ({"client.learning_rate": -0.1}, ValueError, "learning_rate=-0.1"),
    ({"server.learning_rate": 0.0}, ValueError, "learning_rate=0.0"),
    ({"num_rounds": 0}, ValueError, "num_rounds=0"),
    ({"cohort.num_devices": -1}, ValueError, "num_devices=-1"),
  ],
)
def test_bad_config_raises(tmp_path, overrides, error, message):
  with pytest.raises(error, match=message):
    experiment.run_experiment(_config(**overrides), str(tmp_path))


def test_bad_num_devices_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match="num_devices=-1"):
    experiment.run_experiment(
      _config(**{"cohort.num_devices": -1}), str(workdir)
    )
  assert not workdir.exists()


def test_missing_data_file_raises(tmp_path):
  config = _config()
  with config.unlocked():
    config.data.csv_path = str(tmp_path / "absent.csv")
  with pytest.raises(FileNotFoundError, match="absent.csv"):
    experiment.run_experiment(config, str(tmp_path / "run"))


def test_haiku_model_trains_end_to_end(tmp_path):
  final = experiment.run_experiment(
    _config(**{"model.library": "haiku"}), str(tmp_path)
  )
  assert 0.5 < final["pooled_test_accuracy"] <= 1.0


def test_digits_cnn_config_runs(tmp_path):
  from configs import digits_cnn

  config = digits_cnn.get_config()
  config.num_rounds = 2
  config.eval_every = 1
  config.progress_bar = False
  final = experiment.run_experiment(config, str(tmp_path))
  assert len(final["per_client"]) == 20
  assert final["rounds"] == 2
  # Ten digit classes: chance is about 0.1, and two rounds already help.
  assert final["pooled_test_accuracy"] > 0.2


def test_plots_draw_only_the_largest_sites(tmp_path, monkeypatch):
  from fedjax_med.training import writers

  names = tuple(f"site_{k}" for k in range(30))
  with writers.MetricWriter(str(tmp_path)) as writer:
    writer.write_scalars(1, {f"eval/{n}/accuracy": 0.5 for n in names})
  drawn = []
  monkeypatch.setattr(
    experiment,
    "plot_client_metrics",
    lambda records, metric, path, client_names: drawn.append(client_names),
  )
  sizes = list(range(30))  # site_29 has the most test rows.
  experiment.write_plots(str(tmp_path), names, sizes)
  assert len(drawn) == len(experiment.PLOTTED_METRICS)
  assert len(drawn[0]) == experiment.MAX_PLOTTED_SITES
  assert "site_29" in drawn[0]
  assert "site_0" not in drawn[0]
