"""Personalized evaluation and leave-one-site-out on Fed-Heart-Disease."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import fed_heart_disease
from fedjax_med.algorithms.registry import build_algorithm
from fedjax_med.core.algorithm import FederatedAlgorithm
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.training import experiment, protocols
from fedjax_med.training.checkpoint import Checkpointer
from fedjax_med.training.evaluation import evaluate, make_predict_fn
from fedjax_med.training.writers import read_jsonl
from tests import toy

KEY = jax.random.PRNGKey(0)


def _config(**overrides):
  config = fed_heart_disease.get_config()
  config.num_rounds = 2
  config.eval_every = 1
  config.checkpoint_every = 2
  config.progress_bar = False
  for dotted, value in overrides.items():
    section, _, field = dotted.rpartition(".")
    target = config
    for part in filter(None, section.split(".")):
      target = target[part]
    target[field] = value
  return config


# Personalized evaluation.


def _two_site_data():
  # Site a has 3 positives and 1 negative, site b the reverse.
  x = np.zeros((4, 5), np.float32)
  site_0 = (x, np.asarray([1, 1, 1, 0]))
  site_1 = (x, np.asarray([0, 0, 0, 1]))
  return FederatedData.from_clients(
    [site_0, site_1], [site_0, site_1], client_names=("a", "b")
  )


def _constant_variables(model, bias):
  variables = model.init(KEY, jnp.zeros((1, 5)))
  return jax.tree.map(lambda leaf: jnp.full_like(leaf, bias), variables)


def _fake_algorithm(global_variables, client_variables):
  return FederatedAlgorithm(
    init=lambda rng, variables: (),
    run_round=lambda state, data, rng: (state, {}),
    global_variables=lambda state: global_variables,
    client_variables=client_variables,
  )


def test_personalized_uses_each_clients_model():
  data = _two_site_data()
  model = toy.logistic_model()
  # Site a's model always predicts 1, site b's always 0; the global model
  # always predicts 0.
  positive = _constant_variables(model, 10.0)
  negative = _constant_variables(model, -10.0)
  stacked = jax.tree.map(lambda p, n: jnp.stack([p, n]), positive, negative)
  algorithm = _fake_algorithm(negative, lambda state: stacked)
  global_result = evaluate(
    make_predict_fn(model), negative, data.test, data.client_names
  )

  evaluator = protocols.PersonalizedEvaluator(model, algorithm, data, data)
  result = evaluator((), global_result)

  assert evaluator.has_client_models
  assert result["source"] == "client_models"
  assert result["per_client"]["a"]["accuracy"] == pytest.approx(0.75)
  assert result["per_client"]["b"]["accuracy"] == pytest.approx(0.75)
  assert global_result["per_client"]["a"]["accuracy"] == pytest.approx(0.25)
  assert result["worst_client"]["accuracy"] == pytest.approx(0.75)
  scalars = protocols.personalized_scalars(result)
  assert scalars["eval/personalized/a/accuracy"] == pytest.approx(0.75)
  assert scalars["eval/personalized/client_mean/accuracy"] == pytest.approx(
    0.75
  )


def test_personalized_without_client_models_is_global():
  data = _two_site_data()
  model = toy.logistic_model()
  negative = _constant_variables(model, -10.0)
  algorithm = _fake_algorithm(negative, None)
  global_result = evaluate(
    make_predict_fn(model), negative, data.test, data.client_names
  )

  evaluator = protocols.PersonalizedEvaluator(model, algorithm, data, data)
  result = evaluator((), global_result)

  assert not evaluator.has_client_models
  assert result["source"] == "global_model"
  assert result["per_client"] == global_result["per_client"]
  assert protocols.personalized_scalars(result) == {}


def _checkpoint_state(workdir, config, round_index):
  data = experiment.load_data(config)
  model = experiment.build_model(config, data)
  algorithm = build_algorithm(config, model, data)
  state_like = algorithm.init(KEY, model.init(KEY, data.train.x[0, :1]))
  checkpointer = Checkpointer(str(workdir))
  state, _ = checkpointer.restore(round_index, state_like, KEY)
  checkpointer.close()
  return state


def test_ditto_resume_equals_uninterrupted_run(tmp_path):
  ditto = {"algorithm.name": "ditto", "algorithm.personal_steps": 2}
  straight = tmp_path / "straight"
  final = experiment.run_experiment(
    _config(num_rounds=6, eval_every=3, checkpoint_every=3, **ditto),
    str(straight),
  )
  resumed = tmp_path / "resumed"
  experiment.run_experiment(
    _config(num_rounds=3, eval_every=3, checkpoint_every=3, **ditto),
    str(resumed),
  )
  experiment.run_experiment(
    _config(num_rounds=6, eval_every=3, checkpoint_every=3, **ditto),
    str(resumed),
    resume=True,
  )

  config = _config(**ditto)
  a = _checkpoint_state(straight, config, 6)
  b = _checkpoint_state(resumed, config, 6)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  # Training made the sites' personal models differ.
  kernels = np.asarray(b.client_states["params"]["Dense_0"]["kernel"])
  assert not np.allclose(kernels[0], kernels[1])

  saved = json.loads((straight / "final_metrics.json").read_text())
  assert saved["personalized"]["source"] == "client_models"
  assert set(saved["personalized"]["per_client"]) == set(saved["per_client"])
  assert final["personalized"]["worst_client"]["name"] in saved["per_client"]
  records = read_jsonl(str(straight / "metrics.jsonl"))
  assert "eval/personalized/client_mean/accuracy" in records[2]
  assert "eval/personalized/worst_client/accuracy" in records[5]


def test_fedavg_personalized_entry_is_labelled_global(tmp_path):
  final = experiment.run_experiment(_config(num_rounds=1), str(tmp_path))
  assert final["personalized"]["source"] == "global_model"
  assert final["personalized"]["per_client"] == final["per_client"]
  records = read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert not any(k.startswith("eval/personalized") for k in records[0])


# Leave-one-site-out.


def _row_set(split):
  rows = set()
  for k in range(split.num_clients):
    x, y = split.client(k)
    rows.update((xi.tobytes(), int(yi)) for xi, yi in zip(x, y, strict=True))
  return rows


def test_holdout_data_excludes_site_and_standardizes_without_it():
  config = _config(**{"data.standardize": False})
  data = experiment.load_data(config)
  for site, name in enumerate(data.client_names):
    train_data, holdout = protocols.holdout_data(data, site, standardize=False)
    assert name not in train_data.client_names
    assert holdout.client_names == (name,)
    seen = _row_set(train_data.train) | _row_set(train_data.test)
    unseen = _row_set(holdout.train) | _row_set(holdout.test)
    assert not seen & unseen

  train_data, holdout = protocols.holdout_data(data, 0, standardize=True)
  x, _ = train_data.train.pooled()
  np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
  # The held-out site's rows are not centred by its own statistics.
  held_x, _ = holdout.train.pooled()
  assert np.abs(held_x.mean(axis=0)).max() > 0.1


def test_leave_one_site_out_trains_without_site(tmp_path, monkeypatch):
  config = _config(num_rounds=1, protocol="leave_one_site_out")
  raw = experiment.load_data(protocols.loading_config(config))
  calls = []
  train_and_evaluate = experiment.train_and_evaluate

  def recording(site_config, train_data, eval_data, workdir, **kwargs):
    calls.append((site_config, train_data))
    return train_and_evaluate(
      site_config, train_data, eval_data, workdir, **kwargs
    )

  monkeypatch.setattr(experiment, "train_and_evaluate", recording)
  final = experiment.run_experiment(config, str(tmp_path))

  assert len(calls) == raw.num_clients
  for site, (site_config, train_data) in enumerate(calls):
    name = raw.client_names[site]
    assert name not in train_data.client_names
    assert site_config.cohort.clients_per_round == raw.num_clients - 1
    # The held-out rows, standardized as the training sites are.
    _, holdout = protocols.holdout_data(raw, site, standardize=True)
    unseen = _row_set(holdout.train) | _row_set(holdout.test)
    assert not (_row_set(train_data.train) | _row_set(train_data.test)) & unseen
    assert int(train_data.train.num_examples.sum()) == int(
      raw.train.num_examples.sum() - raw.train.num_examples[site]
    )

  saved = json.loads((tmp_path / "final_metrics.json").read_text())
  summary = saved["leave_one_site_out"]
  assert summary["holdout_rows"] == "all"
  assert set(summary["per_site"]) == set(raw.client_names)
  totals = raw.train.num_examples + raw.test.num_examples
  for k, name in enumerate(raw.client_names):
    assert summary["per_site"][name]["num_examples"] == totals[k]
  accuracies = {n: m["accuracy"] for n, m in summary["per_site"].items()}
  worst = min(accuracies, key=accuracies.get)
  assert summary["worst_site"] == {"name": worst, "accuracy": accuracies[worst]}
  assert saved["worst_client"] == final["leave_one_site_out"]["worst_site"]
  assert summary["mean"]["accuracy"] == pytest.approx(
    np.mean(list(accuracies.values()))
  )
  assert (tmp_path / "holdout_VA_Long_Beach" / "metrics.jsonl").exists()


def test_evaluate_holdout_rows():
  config = _config()
  data = experiment.load_data(config)
  model = experiment.build_model(config, data)
  variables = model.init(KEY, data.train.x[0, :1])
  _, holdout = protocols.holdout_data(data, 2, standardize=False)
  every_row = protocols.evaluate_holdout(model, variables, holdout, "all")
  test_rows = protocols.evaluate_holdout(model, variables, holdout, "test")
  n_train, n_test = data.train.num_examples[2], data.test.num_examples[2]
  assert every_row["num_examples"] == n_train + n_test
  assert test_rows["num_examples"] == n_test


@pytest.mark.parametrize("name", ["pooled", "local"])
def test_leave_one_site_out_rejects_baselines(tmp_path, name):
  config = _config(protocol="leave_one_site_out", **{"algorithm.name": name})
  with pytest.raises(ValueError, match="does not apply"):
    experiment.run_experiment(config, str(tmp_path))


@pytest.mark.parametrize(
  "field, value", [("protocol", "cross_site"), ("holdout_rows", "train")]
)
def test_unknown_protocol_settings_raise(tmp_path, field, value):
  with pytest.raises(ValueError, match=f"{field}={value!r}"):
    experiment.run_experiment(_config(**{field: value}), str(tmp_path))
