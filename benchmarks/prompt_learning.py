r"""Federated prompt learning on multi-domain digits: base and new classes.

The six sites of `fedjax_med.data.multidomain` (clean, contrast, blur,
noise, inverted, low_resolution) hold the scikit-learn digits. The dual
encoder is a small image tower with either the small random text tower
(`--text_tower=small`) or the pretrained all-MiniLM-L6-v2 (`minilm`).

1. Alignment: the image tower is trained against the frozen text tower's
   features of "a photo of the digit {name}." on the clean site's training
   images of all ten classes (`fedjax_med.prompts.alignment`). This stands
   in for a pretrained CLIP, whose pretraining data would also have covered
   every class. Test splits are never used.
2. Prompt learning on the base classes 0-4: every site trains on its own
   training images of those classes, and FedAvg averages the prompts each
   round, with both towers frozen.
3. Evaluation on every site's test split: base-class images classified
   among the base classes and new-class images (5-9) among the new classes,
   with the same prompts, and the harmonic mean of the two pooled
   accuracies.

Rows: the hand-written prompt (zero-shot), CoOp (4 context vectors from
N(0, 0.02^2)), the FedTPG-style generator, the generator with FedCSAP's
style tokens, and BiPrompt's test-time adaptation on each site's test
batches of 32 on top of the CoOp prompts.

Every method runs once per seed, and the table shows the mean and sample
standard deviation over seeds. A seed sets the towers' random weights (the
small text tower's too), the alignment batches, the prompts' start and the
minibatches. The site split and the train/test split are the same for every
seed. The JSON output also holds every run's per-site accuracies.

Run from the repository root (the MiniLM tower needs the environment of
scripts/in_env.sh):
  python benchmarks/prompt_learning.py
  python benchmarks/prompt_learning.py --quick --seeds=0 \
      --output=/tmp/prompts.json
  python benchmarks/prompt_learning.py --text_tower=minilm
"""

from __future__ import annotations

import json
import pathlib
import shlex
import sys
import time

import jax
import numpy as np
from absl import app, flags, logging

from fedjax_med.algorithms.fedavg import ClientConfig, CohortConfig
from fedjax_med.algorithms.prompt_learning import federated_prompt_learning
from fedjax_med.data.multidomain import load_digits_multidomain
from fedjax_med.models import dual_encoder as dual
from fedjax_med.models.small_towers import small_dual_encoder
from fedjax_med.prompts import base_new
from fedjax_med.prompts.alignment import align_image_tower
from fedjax_med.prompts.biprompt import biprompt, predict_with_biprompt
from fedjax_med.prompts.coop import CoOpConfig, coop
from fedjax_med.prompts.generator import GeneratorConfig, prompt_generator
from fedjax_med.training import run_metadata

ROOT = pathlib.Path(__file__).resolve().parents[1]
BASE_CLASSES = (0, 1, 2, 3, 4)
NEW_CLASSES = (5, 6, 7, 8, 9)
TEXT_TOWERS = ("small", "minilm")
METHODS = ("zero_shot", "coop", "generator", "generator_style", "biprompt")
DISPLAY_NAMES = {
  "zero_shot": "Hand-written prompt (zero-shot)",
  "coop": "CoOp, FedAvg",
  "generator": "FedTPG-style generator, FedAvg",
  "generator_style": "Generator + style tokens (FedCSAP option)",
  "biprompt": "CoOp + BiPrompt at test time",
}

_TEXT_TOWER = flags.DEFINE_enum(
  "text_tower", "small", TEXT_TOWERS, "Text side of the dual encoder."
)
_NUM_ROUNDS = flags.DEFINE_integer(
  "num_rounds", None, "Federated rounds (default 40, or 5 with --quick)."
)
_ALIGN_STEPS = flags.DEFINE_integer(
  "align_steps", None, "Alignment steps (default 400, or 100 with --quick)."
)
_METHODS = flags.DEFINE_list(
  "methods",
  list(METHODS),
  f"Methods to run, from {list(METHODS)}; biprompt needs coop.",
)
_SEEDS = flags.DEFINE_list(
  "seeds", ["0", "1", "2"], "Seeds of the towers and the rounds, one run each."
)
_QUICK = flags.DEFINE_bool(
  "quick", False, "A short run of every method, for tests."
)
_OUTPUT = flags.DEFINE_string(
  "output",
  str(ROOT / "benchmarks" / "results" / "prompt_learning.json"),
  "Where the JSON results go.",
)


def build_towers(text_tower: str, seed: int):
  """Returns `(encoder, params)` for `text_tower`."""
  key = jax.random.PRNGKey(seed)
  if text_tower == "small":
    return small_dual_encoder(key)
  from fedjax_med.models.minilm_towers import minilm_dual_encoder

  return minilm_dual_encoder(key)


def _learners(encoder, params):
  return {
    "coop": coop(encoder, params, CoOpConfig(num_context=4)),
    "generator": prompt_generator(encoder, params, GeneratorConfig()),
    "generator_style": prompt_generator(
      encoder, params, GeneratorConfig(use_style=True)
    ),
  }


def _template_learner(encoder, params):
  # CoOp started from the template's words is the hand-written prompt.
  words = dual.DEFAULT_TEMPLATE.replace(" {}.", "")
  _, mask = encoder.tokenize([words], encoder.max_length)
  config = CoOpConfig(num_context=int(mask[0].sum()) - 2, init_words=words)
  return coop(encoder, params, config)


def _summary(result: dict) -> dict:
  return {
    "base_accuracy": result["base"]["pooled"]["accuracy"],
    "new_accuracy": result["new"]["pooled"]["accuracy"],
    "harmonic_mean": result["harmonic_mean"],
    "base_worst_site": result["base"]["worst_client"],
    "new_worst_site": result["new"]["worst_client"],
    "base_per_site": {
      name: metrics["accuracy"]
      for name, metrics in result["base"]["per_client"].items()
    },
  }


def train_federated(encoder, params, learner, data, num_rounds, seed):
  """Runs FedAvg on the prompts; returns the prompts and round metrics."""
  base = base_new.select_classes(data, BASE_CLASSES)
  names = [dual.DIGIT_NAMES[c] for c in BASE_CLASSES]
  algorithm, model = federated_prompt_learning(
    encoder,
    params,
    learner,
    names,
    base.num_clients,
    client=ClientConfig(
      learning_rate=0.01, num_local_steps=5, batch_size=16, optimizer="adam"
    ),
    cohort=CohortConfig(clients_per_round=base.num_clients),
    dataset_name=data.name,
  )
  key = jax.random.PRNGKey(seed)
  state = algorithm.init(key, model.init(key, None))
  run_round = jax.jit(algorithm.run_round)
  history = []
  for r in range(num_rounds):
    state, metrics = run_round(state, base, jax.random.fold_in(key, r))
    history.append({k: float(v) for k, v in metrics.items()})
  return state.params, history


def _biprompt_accuracy(encoder, params, learner, prompt_params, data):
  # Each site adapts on its own test batches, for base and new classes.
  accuracies = {}
  for key, classes in (("base", BASE_CLASSES), ("new", NEW_CLASSES)):
    names = [dual.DIGIT_NAMES[c] for c in classes]
    method = biprompt(encoder, params, learner, names)
    subset = base_new.select_classes(data, classes)
    correct, total = 0, 0
    for k in range(subset.num_clients):
      x, y = subset.test.client(k)
      logits = predict_with_biprompt(method, prompt_params, x, 32)
      correct += int(np.sum(np.argmax(logits, axis=-1) == y))
      total += len(y)
    accuracies[key] = correct / total
  accuracies["harmonic_mean"] = base_new.harmonic_mean(
    accuracies["base"], accuracies["new"]
  )
  return accuracies


def run(
  text_tower: str,
  num_rounds: int,
  align_steps: int,
  seed: int,
  methods: tuple[str, ...] = METHODS,
):
  """Runs each method once; returns the JSON payload without metadata."""
  unknown = sorted(set(methods) - set(METHODS))
  if unknown:
    raise ValueError(f"unknown methods {unknown}; use names from {METHODS}.")
  if "biprompt" in methods and "coop" not in methods:
    raise ValueError("biprompt adapts the CoOp prompts; add coop to methods.")
  data = load_digits_multidomain(seed=0)
  encoder, params = build_towers(text_tower, seed)
  clean = data.client_names.index("clean")
  x, y = data.train.client(clean)
  start = time.perf_counter()
  params, align_losses = align_image_tower(
    encoder, params, x, y, dual.DIGIT_NAMES, num_steps=align_steps, seed=seed
  )
  logging.info("alignment took %.1f s", time.perf_counter() - start)

  def evaluate(learner, prompt_params):
    return base_new.evaluate_base_new(
      encoder,
      params,
      learner,
      prompt_params,
      data,
      dual.DIGIT_NAMES,
      BASE_CLASSES,
      NEW_CLASSES,
    )

  results = {}
  if "zero_shot" in methods:
    template = _template_learner(encoder, params)
    results["zero_shot"] = _summary(
      evaluate(template, template.init(jax.random.PRNGKey(0)))
    )
  trained = {}
  for name, learner in _learners(encoder, params).items():
    if name not in methods:
      continue
    start = time.perf_counter()
    prompt_params, history = train_federated(
      encoder, params, learner, data, num_rounds, seed
    )
    seconds = time.perf_counter() - start
    trained[name] = (learner, prompt_params)
    results[name] = {
      **_summary(evaluate(learner, prompt_params)),
      "uplink_bytes_per_round": history[-1]["uplink_bytes"],
      "num_prompt_params": int(
        sum(leaf.size for leaf in jax.tree.leaves(prompt_params))
      ),
      "final_train_loss": history[-1]["train_loss"],
      "train_seconds": seconds,
    }
    logging.info("%s: %s", name, results[name])

  if "biprompt" in methods:
    learner, prompt_params = trained["coop"]
    start = time.perf_counter()
    accuracies = _biprompt_accuracy(
      encoder, params, learner, prompt_params, data
    )
    results["biprompt"] = {
      "base_accuracy": accuracies["base"],
      "new_accuracy": accuracies["new"],
      "harmonic_mean": accuracies["harmonic_mean"],
      "test_seconds": time.perf_counter() - start,
    }
  return {
    "text_tower": text_tower,
    "num_rounds": num_rounds,
    "align_steps": align_steps,
    "final_align_loss": float(np.mean(align_losses[-20:])),
    "seed": seed,
    "results": results,
  }


SUMMARY_KEYS = ("base_accuracy", "new_accuracy", "harmonic_mean")


def summarize(runs: list[dict]) -> dict:
  """Returns each method's mean and sample standard deviation over runs."""
  summary = {}
  for method in runs[0]["results"]:
    row = {}
    for key in SUMMARY_KEYS:
      values = np.asarray([run["results"][method][key] for run in runs])
      row[key] = float(values.mean())
      row[f"{key}_std"] = float(values.std(ddof=1)) if len(runs) > 1 else 0.0
    uplink = runs[0]["results"][method].get("uplink_bytes_per_round")
    if uplink is not None:
      row["uplink_bytes_per_round"] = uplink
    summary[method] = row
  return summary


def markdown_table(summary: dict) -> str:
  """Formats the summary as a markdown table of mean ± std cells."""
  lines = [
    "| method | base accuracy | new accuracy | harmonic mean | uplink bytes "
    "per round |",
    "|---|---|---|---|---|",
  ]
  for method in METHODS:
    if method not in summary:
      continue
    row = summary[method]
    cells = [
      f"{row[key]:.3f} ± {row[key + '_std']:.3f}" for key in SUMMARY_KEYS
    ]
    uplink = row.get("uplink_bytes_per_round")
    cells.append("-" if uplink is None else f"{uplink:,.0f}")
    lines.append(f"| {DISPLAY_NAMES[method]} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  num_rounds = _NUM_ROUNDS.value or (5 if _QUICK.value else 40)
  align_steps = _ALIGN_STEPS.value or (100 if _QUICK.value else 400)
  start = time.perf_counter()
  runs = [
    run(
      _TEXT_TOWER.value,
      num_rounds,
      align_steps,
      int(seed),
      tuple(_METHODS.value),
    )
    for seed in _SEEDS.value
  ]
  payload = {
    "text_tower": _TEXT_TOWER.value,
    "num_rounds": num_rounds,
    "align_steps": align_steps,
    "seeds": [int(seed) for seed in _SEEDS.value],
    "summary": summarize(runs),
    "runs": runs,
    "seconds": time.perf_counter() - start,
  }
  command = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
  payload["metadata"] = run_metadata.collect_metadata(
    command, (*run_metadata.DEFAULT_PACKAGES, "scikit-learn")
  )
  output = pathlib.Path(_OUTPUT.value)
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
  print(markdown_table(payload["summary"]))
  print(f"total {payload['seconds']:.0f} s; results in {output}")


if __name__ == "__main__":
  app.run(main)
