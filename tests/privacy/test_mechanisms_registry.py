"""Privacy settings read from a config, and end-to-end DP experiments."""

import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import fed_heart_disease
from fedjax_med.algorithms import fedavg as fedavg_lib
from fedjax_med.algorithms import privacy_wiring, registry
from fedjax_med.core import aggregation
from fedjax_med.models.base import from_flax
from fedjax_med.privacy import dp_aggregation, dp_sgd
from fedjax_med.training import experiment
from tests import toy

KEY = jax.random.PRNGKey(0)


def _config(**overrides):
  config = fed_heart_disease.get_config()
  config.progress_bar = False
  for dotted, value in overrides.items():
    section, field = dotted.split(".")
    config[section][field] = value
  return config


def _data():
  return toy.random_binary_data([12, 7, 20, 15])


def _pieces(config, model=None):
  data = _data()
  model = model or toy.logistic_model()
  cohort = fedavg_lib.CohortConfig(
    clients_per_round=config.cohort.clients_per_round,
    sampling=config.cohort.sampling,
    poisson_rate=config.cohort.poisson_rate or None,
    weighting=config.cohort.weighting,
  )
  return registry.privacy_pieces(config, model, data, cohort)


def test_mode_none_and_missing_section_build_nothing():
  assert _pieces(_config()) == (None, None)
  config = _config()
  del config["privacy"]
  assert _pieces(config) == (None, None)


@pytest.mark.parametrize(
  "sampling, rate, expected",
  [("uniform", 0.0, 3.0), ("poisson", 0.25, 1.0)],
)
def test_client_mode_divides_by_expected_cohort(sampling, rate, expected):
  config = _config(
    **{
      "privacy.mode": "client",
      "privacy.noise_multiplier": 0.0,
      "privacy.clip_norm": 100.0,
      "cohort.weighting": "uniform",
      "cohort.sampling": sampling,
      "cohort.poisson_rate": rate,
      "cohort.clients_per_round": 3 if sampling == "uniform" else 4,
    }
  )
  aggregator, dp_config = _pieces(config)
  assert dp_config is None
  assert isinstance(aggregator, aggregation.Aggregator)
  total = {"w": jnp.asarray([6.0, -3.0])}
  finalized = aggregator.finalize(
    total,
    jnp.asarray(2.0),
    {"unclipped_centered": 0.0, "clipped": 0.0},
    jnp.asarray(2),
    aggregator.init(total),
    KEY,
  )
  np.testing.assert_allclose(
    finalized.mean_delta["w"], np.asarray([6.0, -3.0]) / expected, rtol=1e-6
  )


def test_client_mode_adaptive_reads_settings():
  config = _config(
    **{
      "privacy.mode": "client",
      "privacy.adaptive_clipping": True,
      "privacy.clip_norm": 0.3,
      "cohort.weighting": "uniform",
    }
  )
  aggregator, _ = _pieces(config)
  state = aggregator.init({"w": jnp.zeros(2)})
  assert isinstance(state, dp_aggregation.DPAggregatorState)
  np.testing.assert_allclose(state.clip_norm, 0.3)


def test_example_mode_builds_dp_sgd_config():
  config = _config(
    **{
      "privacy.mode": "example",
      "privacy.clip_norm": 0.7,
      "privacy.noise_multiplier": 1.3,
      "privacy.batch_sampling": "fixed_size",
    }
  )
  aggregator, dp_config = _pieces(config)
  assert aggregator is None
  assert dp_config == dp_sgd.DPSGDConfig(0.7, 1.3, "fixed_size", None)


class _BatchNormModel(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(1)(nn.BatchNorm(use_running_average=not train)(x))


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"privacy.mode": "local"}, "privacy.mode='local' is unknown"),
    (
      {"privacy.mode": "client", "privacy.clip_norm": 0.0},
      r"privacy.clip_norm=0.0 must be positive",
    ),
    (
      {"privacy.mode": "example", "privacy.clip_norm": -2.0},
      r"privacy.clip_norm=-2.0 must be positive",
    ),
    (
      {"privacy.mode": "example", "privacy.noise_multiplier": -0.1},
      r"privacy.noise_multiplier=-0.1 must be non-negative",
    ),
    (
      {"privacy.mode": "client", "cohort.weighting": "example"},
      r"cohort.weighting='example' .* --config.cohort.weighting=uniform",
    ),
    (
      {
        "privacy.mode": "client",
        "cohort.weighting": "uniform",
        "algorithm.name": "scaffold",
      },
      "does not support algorithm.name='scaffold'",
    ),
    (
      {"privacy.mode": "example", "privacy.adaptive_clipping": True},
      "adaptive_clipping=True is implemented for privacy.mode='client' only",
    ),
    (
      {"privacy.mode": "example", "privacy.batch_sampling": "shuffle"},
      "batch_sampling='shuffle' is unknown",
    ),
  ],
)
def test_invalid_privacy_settings_raise(overrides, message):
  config = _config(**overrides)
  with pytest.raises(ValueError, match=message):
    registry.build_algorithm(config, toy.logistic_model(), _data())


@pytest.mark.parametrize("mode", ["client", "example"])
def test_batch_norm_model_rejected_under_dp(mode):
  config = _config(**{"privacy.mode": mode, "cohort.weighting": "uniform"})
  model = from_flax(_BatchNormModel(), 1)
  with pytest.raises(
    ValueError, match=r"non-trainable state \['batch_stats'\]"
  ):
    registry.build_algorithm(config, model, _data())


@pytest.mark.parametrize(
  "name", ["fedavg", "fedprox", "fedavgm", "fedadam", "scaffold"]
)
def test_example_mode_reaches_every_algorithm(name, monkeypatch):
  built = []
  original = fedavg_lib.dp_sgd.make_batch_gradient

  def spy(config, batch_size):
    built.append((config, batch_size))
    return original(config, batch_size)

  monkeypatch.setattr(fedavg_lib.dp_sgd, "make_batch_gradient", spy)
  config = _config(
    **{
      "privacy.mode": "example",
      "privacy.clip_norm": 0.4,
      "privacy.noise_multiplier": 0.9,
      "algorithm.name": name,
    }
  )
  registry.build_algorithm(config, toy.logistic_model(), _data())
  assert built == [(dp_sgd.DPSGDConfig(0.4, 0.9, "poisson", None), 16)]


def test_poisson_overflow_probability_matches_binomial_tail():
  # P(Binomial(50, 0.1) > 10) = 0.0093546.
  assert privacy_wiring._binomial_tail(50, 0.1, 10) == pytest.approx(
    0.0093546, rel=1e-4
  )
  assert privacy_wiring._binomial_tail(10, 1.0, 5) == 1.0


def _read_train_records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_client_level_dp_experiment_on_breast_cancer(tmp_path):
  config = fed_heart_disease.get_config()
  config.num_rounds = 3
  config.eval_every = 3
  config.checkpoint_every = 3
  config.progress_bar = False

  config.data = config.data.__class__(
    {"name": "breast_cancer", "partition": "iid", "num_clients": 50}
  )
  config.cohort.clients_per_round = 50
  config.cohort.sampling = "poisson"
  config.cohort.poisson_rate = 0.2
  config.cohort.weighting = "uniform"
  config.cohort.clients_per_chunk = 10

  config.privacy.mode = "client"
  config.privacy.clip_norm = 0.5
  config.privacy.noise_multiplier = 1.0
  config.privacy.adaptive_clipping = True
  config.privacy.target_epsilon = 0.0
  config.privacy.stop_at_budget = False
  final = experiment.run_experiment(config, str(tmp_path))
  assert math.isfinite(final["pooled_test_accuracy"])

  records = _read_train_records(tmp_path)
  assert len(records) == 3
  for record in records:
    assert "train/clip_norm" in record
    assert "train/noise_stddev" in record
    assert 0.0 <= record["train/clipped_fraction"] <= 1.0
  assert records[0]["train/clip_norm"] == pytest.approx(0.5)
  # Adaptive clipping moved the clip norm after the first round.
  assert records[1]["train/clip_norm"] != pytest.approx(0.5)


@pytest.mark.slow
def test_example_level_dp_experiment_on_fed_heart_disease(tmp_path):
  config = fed_heart_disease.get_config()
  config.num_rounds = 3
  config.eval_every = 3
  config.checkpoint_every = 3
  config.progress_bar = False
  config.privacy.mode = "example"
  config.privacy.clip_norm = 1.0
  config.privacy.noise_multiplier = 1.1
  config.privacy.target_epsilon = 0.0
  config.privacy.stop_at_budget = False
  final = experiment.run_experiment(config, str(tmp_path))
  assert math.isfinite(final["pooled_test_accuracy"])
  assert final["rounds"] == 3
  assert len(_read_train_records(tmp_path)) == 3
