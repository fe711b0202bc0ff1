"""The simulation that deployment tests compare against."""

import jax
import jax.numpy as jnp

from fedjax_med.algorithms.registry import build_algorithm
from fedjax_med.training import experiment


def simulate(config):
  """Runs the compiled rounds with `experiment.train_and_evaluate`'s keys.

  Returns:
    `(data, global variables, per-round metrics)`.
  """
  data = experiment.load_data(config)
  model = experiment.build_model(config, data)
  algorithm = build_algorithm(config, model, data)
  init_key, run_key = jax.random.split(jax.random.PRNGKey(config.seed))
  variables = model.init(init_key, jnp.asarray(data.train.x[0, :1]))
  state = algorithm.init(init_key, variables)
  run_round = jax.jit(algorithm.run_round)
  history = []
  for r in range(config.num_rounds):
    state, metrics = run_round(state, data, jax.random.fold_in(run_key, r))
    history.append({k: float(v) for k, v in metrics.items()})
  return data, algorithm.global_variables(state), history
