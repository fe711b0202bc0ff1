"""One call that measures the leakage of a privacy setting.

`run_audit(setting)` returns flat numbers for one setting, so a sweep over
privacy budgets can tabulate them:

  * Gradient inversion (`invert_update`) on the first-round update of the
    untrained model, on Fed-Heart-Disease records and on digits images, for
    each batch size in `setting.batch_sizes`. The attacked view is that of
    `observed_update`: one client's update, or with secure aggregation the
    sum over `K = num_aggregated_clients` clients, each with its own batch
    of `b` records. The cohort size is public, so the attacker divides
    the sum by `K` (the gradient of the mean over all `K b` records) and
    reconstructs `K b` records. Keys `inversion/<dataset>/batch_<b>/<metric>`
    hold "mse" (mean over matched records, in standardized features for
    Fed-Heart-Disease and pixels in [0, 1] for digits), "best_mse" (the best
    reconstructed record), "baseline_mse" (the MSE of guessing every record
    as the dataset's mean record, which uses no update), "label_accuracy"
    and, for images, "psnr" in dB.
  * Membership inference (`membership_audit`) on a model trained with the
    setting's privacy mode. Keys `membership/<metric>`. Secure aggregation
    releases the same sum, so it leaves the trained model, and this attack,
    unchanged. The membership audit ignores it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from fedjax_med.data.registry import load_dataset
from fedjax_med.models.registry import get_model
from fedjax_med.privacy.audit.gradient_inversion import invert_update
from fedjax_med.privacy.audit.membership_audit import (
  membership_audit,
  overfit_config,
)
from fedjax_med.privacy.audit.reconstruction import reconstruction_error
from fedjax_med.privacy.audit.server_view import MODES, observed_update

INVERSION_DATASETS = ("fed_heart_disease", "digits")


class AuditSetting(NamedTuple):
  """A privacy setting to audit and the attacks' settings.

  Attributes:
    mode: "none", "client" (DP-FedAvg) or "example" (DP-SGD), as in the
      `privacy.mode` field of an experiment config.
    clip_norm: `C` of the DP mode.
    noise_multiplier: `z` of the DP mode. The noise has standard deviation
      `z * C`.
    secure_aggregation: Whether the server receives only the sum of
      `num_aggregated_clients` updates.
    num_aggregated_clients: Clients in the secure sum, at least 2.
    batch_sizes: Records per client batch in the inversion audit.
    inversion_datasets: Subset of `INVERSION_DATASETS`.
    heart_model: Zoo model for Fed-Heart-Disease ("logistic_regression" or
      "mlp").
    digits_model: Zoo model for digits ("mlp" or "cnn").
    hidden_sizes: Hidden layers of the MLPs.
    distance: Gradient distance of the attack, "cosine" or "l2". Cosine
      ignores the update's scale, so clipping alone does not mislead it.
    num_inversion_steps: Adam steps per restart.
    num_restarts: Random restarts of the attack.
    membership: Whether to run the membership audit.
    membership_config: Experiment config of the membership target, or None
      for `overfit_config()`. Its privacy mode, clip norm and noise
      multiplier are replaced by this setting's.
    members_per_client: Training rows per client in the membership audit,
      or None to keep every row.
    seed: Seed of the records drawn, initial parameters, noise and attack.
  """

  mode: str = "none"
  clip_norm: float = 1.0
  noise_multiplier: float = 1.0
  secure_aggregation: bool = False
  num_aggregated_clients: int = 4
  batch_sizes: tuple[int, ...] = (1, 4)
  inversion_datasets: tuple[str, ...] = INVERSION_DATASETS
  heart_model: str = "logistic_regression"
  digits_model: str = "mlp"
  hidden_sizes: tuple[int, ...] = (64,)
  distance: str = "cosine"
  num_inversion_steps: int = 1000
  num_restarts: int = 4
  membership: bool = True
  membership_config: ml_collections.ConfigDict | None = None
  members_per_client: int | None = 10
  seed: int = 0


def _validate(setting: AuditSetting) -> None:
  if setting.mode not in MODES:
    raise ValueError(f"mode={setting.mode!r} is unknown; use one of {MODES}.")
  unknown = sorted(set(setting.inversion_datasets) - set(INVERSION_DATASETS))
  if unknown:
    raise ValueError(
      f"inversion_datasets contains {unknown}; use a subset of "
      f"{INVERSION_DATASETS}."
    )
  if setting.secure_aggregation and setting.num_aggregated_clients < 2:
    raise ValueError(
      f"num_aggregated_clients={setting.num_aggregated_clients} gives no "
      "secure sum; use at least 2 or set secure_aggregation=False."
    )


def _client_batches(data, num_clients: int, batch_size: int, seed: int):
  """Draws `batch_size` random training rows from each of the first clients."""
  if num_clients > data.num_clients:
    raise ValueError(
      f"num_aggregated_clients={num_clients} exceeds the "
      f"{data.num_clients} clients of {data.name}; lower it."
    )
  rng = np.random.default_rng(seed)
  batches = []
  for k in range(num_clients):
    x, y = data.train.client(k)
    if len(y) < batch_size:
      raise ValueError(
        f"client {k} of {data.name} has {len(y)} training rows, fewer than "
        f"the batch size {batch_size}; lower batch_sizes."
      )
    rows = rng.choice(len(y), batch_size, replace=False)
    batches.append((x[rows], y[rows]))
  return batches


def inversion_audit(setting: AuditSetting) -> dict[str, float]:
  """Runs the gradient-inversion attack for each dataset and batch size."""
  _validate(setting)
  num_clients = setting.num_aggregated_clients
  if not setting.secure_aggregation:
    num_clients = 1
  results = {}
  for name in setting.inversion_datasets:
    if name == "digits":
      data = load_dataset("digits", partition="iid", seed=setting.seed)
      model_name, data_range, bounds = setting.digits_model, 1.0, (0.0, 1.0)
    else:
      data = load_dataset("fed_heart_disease")
      model_name, data_range, bounds = setting.heart_model, None, None
    options = {}
    if model_name == "mlp":
      options["hidden_sizes"] = setting.hidden_sizes
    model = get_model(
      model_name,
      num_classes=data.num_classes,
      feature_shape=data.feature_shape,
      **options,
    )
    mean_record = data.train.pooled()[0].mean(axis=0)

    for batch_size in setting.batch_sizes:
      key = jax.random.fold_in(jax.random.PRNGKey(setting.seed), batch_size)
      init_key, noise_key, attack_key = jax.random.split(key, 3)
      batches = _client_batches(data, num_clients, batch_size, setting.seed)
      params = model.init(init_key, batches[0][0])["params"]
      update = observed_update(
        model,
        params,
        batches,
        mode=setting.mode,
        key=noise_key,
        clip_norm=setting.clip_norm,
        noise_multiplier=setting.noise_multiplier,
      )
      # The secure sum is the gradient of the mean over all its records,
      # times the public number of clients.
      update = jax.tree.map(lambda leaf: leaf / num_clients, update)
      result = invert_update(
        model,
        params,
        update,
        num_examples=num_clients * batch_size,
        feature_shape=data.feature_shape,
        rng=attack_key,
        distance=setting.distance,
        num_steps=setting.num_inversion_steps,
        num_restarts=setting.num_restarts,
        step_size=0.05 if bounds else 0.1,
        input_bounds=bounds,
      )

      x_true = np.concatenate([x for x, _ in batches])
      y_true = np.concatenate([y for _, y in batches])
      error = reconstruction_error(np.asarray(result.x), x_true, data_range)
      matched = np.asarray(error["true_index"])
      prefix = f"inversion/{name}/batch_{batch_size}"
      results[f"{prefix}/mse"] = error["mse"]
      results[f"{prefix}/best_mse"] = min(error["per_example_mse"])
      results[f"{prefix}/baseline_mse"] = float(
        np.mean((x_true - mean_record) ** 2)
      )
      results[f"{prefix}/label_accuracy"] = float(
        np.mean(np.asarray(result.labels) == y_true[matched])
      )
      if data_range is not None:
        results[f"{prefix}/psnr"] = error["psnr"]
  return results


def run_audit(setting: AuditSetting) -> dict[str, Any]:
  """Returns the inversion and membership numbers of one setting.

  Raises:
    ValueError: For an unknown mode or dataset, fewer than 2 clients in a
      secure sum, or more clients or records than the data holds.
  """
  results: dict[str, Any] = {
    "mode": setting.mode,
    "clip_norm": setting.clip_norm,
    "noise_multiplier": setting.noise_multiplier,
    "secure_aggregation": setting.secure_aggregation,
  }
  results.update(inversion_audit(setting))
  if setting.membership:
    config = setting.membership_config
    config = (
      overfit_config()
      if config is None
      else config.copy_and_resolve_references()
    )
    with config.unlocked():
      config.privacy.mode = setting.mode
      config.privacy.clip_norm = setting.clip_norm
      config.privacy.noise_multiplier = setting.noise_multiplier
      config.seed = setting.seed
      if setting.mode == "client":
        # DP-FedAvg bounds each client's influence, so weights are uniform.
        config.cohort.weighting = "uniform"
    membership = membership_audit(
      config, members_per_client=setting.members_per_client
    )
    for key, value in membership.items():
      if key not in ("fpr", "tpr"):
        results[f"membership/{key}"] = value
    results["membership/roc"] = {
      "fpr": membership["fpr"],
      "tpr": membership["tpr"],
    }
  return results
