"""Secure aggregation selected through the config and the experiment loop."""

import math

import jax
import numpy as np
import pytest

from configs import fed_heart_disease
from fedjax_med.algorithms import registry
from fedjax_med.training import experiment


def _config(**privacy):
  config = fed_heart_disease.get_config()
  config.num_rounds = 5
  config.eval_every = 5
  config.checkpoint_every = 5
  config.progress_bar = False
  config.cohort.weighting = "uniform"
  config.privacy.clip_norm = 100.0
  for field, value in privacy.items():
    config.privacy[field] = value
  return config


def _final_params(config, rounds=5):
  data = experiment.load_data(config)
  model = experiment.build_model(config, data)
  algorithm = registry.build_algorithm(config, model, data)
  init_key, run_key = jax.random.split(jax.random.PRNGKey(config.seed))
  state = algorithm.init(init_key, model.init(init_key, data.train.x[0, :1]))
  run_round = jax.jit(algorithm.run_round)
  device_data = jax.device_put(data)
  metrics = None
  for r in range(rounds):
    state, metrics = run_round(
      state, device_data, jax.random.fold_in(run_key, r)
    )
  return state.params, metrics


def test_secure_sum_matches_plain_uniform_fedavg():
  # With a clip norm far above the deltas, the only difference is the
  # ring's stochastic rounding, about 1e-5 per coordinate.
  plain, _ = _final_params(_config())
  secure, metrics = _final_params(_config(secure_aggregation=True))
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=1e-3), plain, secure
  )
  assert int(metrics["secagg_survivors"]) == 4
  differs = jax.tree.map(lambda a, b: np.any(a != b), plain, secure)
  assert any(jax.tree.leaves(differs))  # The secure path really ran.


def test_secure_aggregation_needs_uniform_weighting():
  config = _config(secure_aggregation=True)
  config.cohort.weighting = "example"
  with pytest.raises(ValueError, match="weighting=uniform"):
    _final_params(config, rounds=1)


def test_secure_aggregation_with_distributed_dp_runs(tmp_path):
  config = _config(
    secure_aggregation=True,
    mode="client",
    clip_norm=1.0,
    noise_multiplier=0.5,
    stop_at_budget=False,
  )
  config.cohort.clients_per_round = 4
  final = experiment.run_experiment(config, str(tmp_path))
  assert math.isfinite(final["pooled_test_accuracy"])
  assert final["epsilon"] > 0


def test_dropouts_lower_the_accounted_noise():
  from fedjax_med.training import privacy_budget

  config = _config(
    secure_aggregation=True,
    mode="client",
    noise_multiplier=1.0,
    secagg_dropout_rate=0.25,
    secagg_threshold=2,
  )
  data = experiment.load_data(config)
  # Four clients expected, three expected to survive, at least two must.
  factor = privacy_budget.distributed_noise_factor(config, data)
  assert factor == pytest.approx(math.sqrt(2 / 3))
  setup = privacy_budget.setup_privacy(config, data)
  (spec,) = setup.accountant.specs.values()
  assert spec.noise_multiplier == pytest.approx(math.sqrt(2 / 3))
  assert setup.config.privacy.noise_multiplier == pytest.approx(1.0)
  config.privacy.secagg_dropout_rate = 0.0
  assert privacy_budget.distributed_noise_factor(config, data) == 1.0
