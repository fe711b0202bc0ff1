"""The headline result: FedAvg's default config over five seeds."""

import numpy as np
import pytest

from configs import fed_heart_disease
from fedjax_med.training.experiment import run_experiment


@pytest.mark.slow
def test_default_config_mean_accuracy(tmp_path):
  accuracies = []
  for seed in range(5):
    config = fed_heart_disease.get_config()
    config.seed = seed
    config.progress_bar = False
    final = run_experiment(config, str(tmp_path / str(seed)))
    accuracies.append(final["pooled_test_accuracy"])

  assert np.mean(accuracies) >= 0.80, accuracies
