"""Fed-Heart-Disease severity: the five-level `num` target (0-4) as classes.

The four hospitals are the clients, as in the main experiment, but the label
is the disease grade itself: 0 (no disease) to 4. The grades are
long-tailed: the training splits hold 235, 139, 49, 48 and 15 patients of
grades 0 to 4, and two hospitals have no patient of some grades. The model
is multinomial logistic regression trained with FedAvg and cross-entropy.

Long-tail options, all switchable from the command line:
  * `client.loss`: cross_entropy, focal, class_balanced, balanced_softmax,
    logit_adjustment or alpa, with its options under
    `client.loss_options.<loss>` (defaults below). Losses that need class
    frequencies use the sum of the hospitals' label histograms.
  * `algorithm.name=fedtail` with `algorithm.rho`,
    `algorithm.matching_weight` and `algorithm.tail_fraction`.
  * `long_tail.tail_fraction`: the tail reported by the metrics is the
    rarest grades holding at most this share of the training patients
    (grades 3 and 4 at 0.2).

final_metrics.json then holds, under "long_tail", balanced accuracy, macro
F1 and recall per grade and on the tail, per hospital and pooled.

Run:
  python scripts/train.py --config=configs/fed_heart_disease_severity.py \
      --workdir=/tmp/fed_heart_disease_severity --config.client.loss=focal
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def add_long_tail_fields(config: ml_collections.ConfigDict) -> None:
  """Adds the loss, FEDTAIL and tail-metric fields with their defaults."""
  config.client.loss = "cross_entropy"
  config.client.loss_options = ml_collections.ConfigDict(
    dict(
      focal=dict(gamma=2.0),
      class_balanced=dict(beta=0.999, base="softmax", gamma=2.0),
      balanced_softmax=dict(),
      logit_adjustment=dict(tau=1.0),
      # The released ALPA code's defaults.
      alpa=dict(
        gamma_neg=4.0, gamma_pos=0.0, clip=0.05, alpha=0.875, beta=1.625
      ),
    )
  )
  # FEDTAIL (algorithm.name="fedtail"); other algorithms ignore these.
  config.algorithm.rho = 0.05
  config.algorithm.matching_weight = 0.1
  config.algorithm.tail_fraction = 0.2

  config.long_tail = ml_collections.ConfigDict(dict(tail_fraction=0.2))


def get_config() -> ml_collections.ConfigDict:
  """Returns the Fed-Heart-Disease severity config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease.py")
  )
  config.data.target = "severity"
  add_long_tail_fields(config)
  return config
