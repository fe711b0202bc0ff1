"""FLeNS (Nesterov look-ahead plus sketched Newton) on Fed-Heart-Disease.

Runs in float64 with a 10-row sample-space sketch per hospital, fewer rows
than the 14 parameters (`fedjax_med/algorithms/flens.py` lists the
readings of the paper and of the authors' code).

Run:
  python scripts/train.py --config=configs/fed_heart_disease_flens.py \\
      --workdir=/tmp/fed_heart_disease_flens
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the FLeNS config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease_fedns.py")
  )
  config.algorithm.name = "flens"
  # "paper": derivatives at the look-ahead point; "code": at w_t.
  config.algorithm.lookahead = "paper"
  # Where the step starts under "paper": "lookahead" or "current".
  config.algorithm.step_from = "lookahead"
  # Momentum under "paper": "constant" (beta_t = beta) or "nesterov"
  # (beta_t = (t - 1) / (t + 2)).
  config.algorithm.beta_schedule = "constant"
  config.algorithm.beta = 0.1
  # "sample" (FedNS-style) or "sqrtm" (the authors' code).
  config.algorithm.curvature = "sample"
  config.algorithm.restart = True
  return config
