r"""Trains a federated algorithm from a config file.

Example:
  python scripts/train.py --config=configs/fed_heart_disease.py \
      --workdir=/tmp/fed_heart_disease --config.algorithm.name=fedprox \
      --config.seed=1

Writes metrics.jsonl, TensorBoard events, per-site PNG plots, orbax
checkpoints and final_metrics.json into --workdir. --resume continues from the
newest checkpoint there. With --config.protocol=leave_one_site_out each
held-out site trains in --workdir/holdout_<site>, and pooled_test_accuracy
covers the held-out sites' rows, each predicted by the model trained without
that site.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from fedjax_med.training.experiment import run_experiment

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file, e.g. configs/fed_heart_disease.py."
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for metrics, checkpoints and results."
)
_RESUME = flags.DEFINE_bool(
  "resume", False, "Continue from the newest checkpoint in --workdir."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  final = run_experiment(_CONFIG.value, _WORKDIR.value, resume=_RESUME.value)
  logging.info(
    "Pooled test accuracy %.4f after %d rounds; results in %s",
    final["pooled_test_accuracy"],
    final["rounds"],
    _WORKDIR.value,
  )
  print(
    f"pooled_test_accuracy={final['pooled_test_accuracy']:.4f} "
    f"worst_client={final['worst_client']['name']} "
    f"({final['worst_client']['accuracy']:.4f})"
  )
  personalized = final.get("personalized")
  if personalized is not None and personalized["source"] == "client_models":
    worst = personalized["worst_client"]
    print(
      "personalized "
      f"client_mean_accuracy={personalized['client_mean']['accuracy']:.4f} "
      f"worst_client={worst['name']} ({worst['accuracy']:.4f})"
    )
  holdouts = final.get("leave_one_site_out")
  if holdouts is not None:
    worst = holdouts["worst_site"]
    print(
      "leave_one_site_out "
      f"mean_accuracy={holdouts['mean']['accuracy']:.4f} "
      f"worst_site={worst['name']} ({worst['accuracy']:.4f})"
    )


if __name__ == "__main__":
  app.run(main)
