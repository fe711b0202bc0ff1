"""The privacy budget of an experiment: accounting wired to the config.

Reads `config.privacy` (every field is shown in `configs/fed_heart_disease.py`)
and builds the `PrivacySpec` of the sampling the run performs:

  * Client-level DP ("client"): one noised release per round, a client is
    the unit. `cohort.sampling="poisson"` is Poisson sampling at
    `cohort.poisson_rate` and needs `cohort.clients_per_round` equal to the
    number of clients, because a smaller cap drops drawn clients, which
    Poisson accounting does not cover. `cohort.sampling="uniform"` is
    fixed-size sampling of `clients_per_round` of the clients.
  * Example-level DP ("example"): each client `k` with `n_k > 0` training
    records is its own group with `client.num_local_steps` releases per
    round and `privacy.batch_sampling` as its sampler: Poisson at rate
    `min(1, client.batch_size / n_k)`, or fixed-size batches of
    `min(client.batch_size, n_k)` of its `n_k` records. A positive
    `privacy.poisson_batch_capacity` below `n_k` caps client `k`'s Poisson
    batches (truncated Poisson sampling, accounted by "pld" only). Every
    round is counted for every client, also one that cohort sampling leaves
    out, which overstates that client's epsilon and never understates it.

`privacy.statistics_noise_multiplier` (default 0, none) is the noise
multiplier of a one-time Gaussian release of record statistics that the
algorithm makes besides its DP-SGD steps (FedHypeVAE's class means and
covariances). Under example-level DP every client's spec composes it once
(`PrivacySpec.one_time_noise_multipliers`), also during calibration.

Two fields are read here that the default config may lack:
`privacy.poisson_batch_capacity` (default 0, no cap) and
`privacy.calibrate_noise` (default True). With `target_epsilon > 0`, True
calibrates `noise_multiplier` so that `num_rounds` rounds spend at most the
target. False keeps the configured `noise_multiplier`, and `target_epsilon`
is then only the budget at which training stops.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

import ml_collections
from absl import logging

from fedjax_med.data.federated_data import FederatedData
from fedjax_med.privacy.accounting import PrivacyAccountant, PrivacySpec
from fedjax_med.privacy.calibration import calibrate_noise_multiplier

MODES = ("none", "client", "example")


def privacy_option(config: ml_collections.ConfigDict, name: str, default):
  """Returns `config.privacy.<name>`, or `default` if the config lacks it."""
  section = config.get("privacy", None)
  if section is None:
    return default
  return section.get(name, default)


def privacy_mode(config: ml_collections.ConfigDict) -> str:
  """Returns the configured DP mode, checking that it is known."""
  mode = privacy_option(config, "mode", "none")
  if mode not in MODES:
    raise ValueError(f"privacy.mode={mode!r} is unknown; use one of {MODES}.")
  return mode


def build_privacy_specs(
  config: ml_collections.ConfigDict,
  data: FederatedData,
  noise_multiplier: float | None,
) -> dict[str, PrivacySpec]:
  """Builds one spec per group of units for the configured DP mode.

  Args:
    config: Experiment config with `privacy.mode` "client" or "example".
    data: The training data; its client sizes set the sampling rates.
    noise_multiplier: The noise multiplier, or None before calibration.

  Returns:
    `{"clients": spec}` for client-level DP; `{client_name: spec}` for
    example-level DP, without clients that hold no training records.
  """
  mode = privacy_mode(config)
  common = dict(
    noise_multiplier=noise_multiplier,
    num_rounds=config.num_rounds,
    adjacency=privacy_option(config, "adjacency", "add_remove"),
    accountant=privacy_option(config, "accountant", "rdp"),
  )
  if mode == "client":
    return {"clients": _client_level_spec(config, data, common)}
  if mode != "example":
    raise ValueError(f"privacy.mode={mode!r} has no privacy accounting.")

  sampling = privacy_option(config, "batch_sampling", "poisson")
  statistics_noise = float(
    privacy_option(config, "statistics_noise_multiplier", 0.0)
  )
  releases = (statistics_noise,) if statistics_noise > 0 else ()
  batch_size = config.client.batch_size
  capacity = privacy_option(config, "poisson_batch_capacity", 0) or None
  specs = {}
  sizes = data.train.num_examples.tolist()
  for name, size in zip(data.client_names, sizes, strict=True):
    if size == 0:
      continue
    if sampling == "poisson":
      sampler = dict(
        sampling_probability=min(1.0, batch_size / size),
        population_size=size,
        max_sample_size=capacity,
      )
    else:
      sampler = dict(sample_size=min(batch_size, size), population_size=size)
    specs[name] = PrivacySpec(
      sampling=sampling,
      steps_per_round=config.client.num_local_steps,
      one_time_noise_multipliers=releases,
      **sampler,
      **common,
    )
  return specs


def _client_level_spec(config, data: FederatedData, common) -> PrivacySpec:
  cohort = config.cohort
  num_clients = data.num_clients
  if cohort.sampling == "poisson":
    if cohort.clients_per_round != num_clients:
      raise ValueError(
        f"cohort.clients_per_round={cohort.clients_per_round} caps the "
        f"Poisson cohort below the {num_clients} clients of {data.name}; "
        "clients drawn beyond the cap are dropped, which Poisson "
        "accounting does not cover. Set cohort.clients_per_round="
        f"{num_clients} (and cohort.clients_per_chunk to bound memory)."
      )
    return PrivacySpec(
      sampling="poisson",
      sampling_probability=cohort.get("poisson_rate", None),
      **common,
    )
  return PrivacySpec(
    sampling="fixed_size",
    sample_size=cohort.clients_per_round,
    population_size=num_clients,
    **common,
  )


class PrivacySetup(NamedTuple):
  """Settings and state of a DP run in the experiment loop.

  Attributes:
    config: Copy of the config whose `privacy.noise_multiplier` is the one
      the run uses (calibrated, or restored from a checkpoint).
    accountant: The run's accountant, at the rounds already trained.
    budget: Epsilon at which training stops, or None to never stop.
  """

  config: ml_collections.ConfigDict
  accountant: PrivacyAccountant
  budget: float | None


def setup_privacy(
  config: ml_collections.ConfigDict,
  data: FederatedData,
  restored_state: dict[str, Any] | None = None,
) -> PrivacySetup:
  """Sets the noise multiplier and builds the accountant of a DP run.

  Args:
    config: Experiment config with `privacy.mode` "client" or "example".
    data: The training data.
    restored_state: `PrivacyAccountant.state_dict()` from the checkpoint
      being resumed, or None for a fresh run. A resumed run keeps the
      checkpoint's noise multiplier, so that a calibrated run is not
      recalibrated to a changed `num_rounds`.

  Raises:
    ValueError: For invalid privacy settings, a target no noise reaches, a
      first round that already exceeds the budget, or a checkpoint whose
      privacy settings differ from the config's.
  """
  target = float(privacy_option(config, "target_epsilon", 0.0))
  delta = float(privacy_option(config, "delta", 1e-5))
  calibrate = target > 0 and privacy_option(config, "calibrate_noise", True)
  # The accountant works with the noise multiplier of the released sum,
  # which distributed noise under dropouts can lower (see
  # `distributed_noise_factor`); the config holds the mechanism's.
  factor = distributed_noise_factor(config, data)
  noise_multiplier = factor * float(
    privacy_option(config, "noise_multiplier", 1.0)
  )

  if restored_state is not None:
    accountant = _restore_accountant(
      config, data, restored_state, delta, calibrate, noise_multiplier
    )
    noise_multiplier = _common_noise_multiplier(accountant)
  else:
    if calibrate:
      specs = build_privacy_specs(config, data, None)
      noise_multiplier = calibrate_noise_multiplier(target, specs, delta)
      logging.info(
        "Calibrated noise_multiplier=%.6f: %d rounds spend at most "
        "epsilon=%g at delta=%g (%s accountant).",
        noise_multiplier,
        config.num_rounds,
        target,
        delta,
        privacy_option(config, "accountant", "rdp"),
      )
    specs = build_privacy_specs(config, data, noise_multiplier)
    accountant = PrivacyAccountant(specs, delta)

  budget = None
  if target > 0 and privacy_option(config, "stop_at_budget", True):
    budget = target
    first = accountant.epsilon(num_rounds=1)
    if restored_state is None and first > budget:
      raise ValueError(
        f"one round already spends epsilon={first:.4g} at delta={delta}, "
        f"above target_epsilon={target}; raise privacy.noise_multiplier "
        "or privacy.target_epsilon, or set privacy.calibrate_noise=True."
      )

  config = copy.deepcopy(config)
  with config.unlocked():
    config.privacy.noise_multiplier = noise_multiplier / factor
  return PrivacySetup(config, accountant, budget)


def distributed_noise_factor(
  config: ml_collections.ConfigDict, data: FederatedData
) -> float:
  """Lower bound on released noise over configured noise under dropouts.

  With secure aggregation and client-level DP, each client adds a share of
  the noise sized for the expected number of survivors E. A round whose sum
  is released has at least the Shamir threshold t survivors (fewer abort),
  so its noise multiplier is at least `z * sqrt(t / E)`. The accountant
  uses that bound; without simulated dropouts the factor is 1.

  Raises:
    ValueError: If dropouts are simulated under Poisson cohorts without an
      explicit `privacy.secagg_threshold`.
  """
  dropout_rate = float(privacy_option(config, "secagg_dropout_rate", 0.0))
  if (
    privacy_mode(config) != "client"
    or not privacy_option(config, "secure_aggregation", False)
    or dropout_rate <= 0
  ):
    return 1.0
  cohort = config.cohort
  if cohort.sampling == "poisson":
    expected = cohort.poisson_rate * data.num_clients
  else:
    expected = cohort.clients_per_round
  threshold = privacy_option(config, "secagg_threshold", 0)
  if not threshold:
    if cohort.sampling == "poisson":
      raise ValueError(
        "privacy.secagg_dropout_rate > 0 with Poisson cohorts needs an "
        "explicit privacy.secagg_threshold, the fewest survivors whose "
        "noise the accountant may count on; set it, e.g. to half the "
        "expected cohort."
      )
    threshold = cohort.clients_per_round // 2 + 1  # Majority of the cohort.
  expected_survivors = expected * (1.0 - dropout_rate)
  return min(1.0, (threshold / expected_survivors) ** 0.5)


def _common_noise_multiplier(accountant: PrivacyAccountant) -> float:
  values = {spec.noise_multiplier for spec in accountant.specs.values()}
  if len(values) != 1:
    raise ValueError(
      f"the accountant contains noise multipliers {sorted(values)}; the "
      "experiment loop runs one noise multiplier for every group."
    )
  return values.pop()


def _restore_accountant(
  config, data, restored_state, delta, calibrate, noise_multiplier
) -> PrivacyAccountant:
  restored = PrivacyAccountant.from_state_dict(restored_state)
  saved_noise = _common_noise_multiplier(restored)
  if not calibrate and saved_noise != noise_multiplier:
    raise ValueError(
      f"privacy.noise_multiplier={noise_multiplier} differs from the "
      f"checkpoint's {saved_noise}; resume with the same noise multiplier."
    )
  specs = build_privacy_specs(config, data, saved_noise)
  planned = {name: spec.replace(num_rounds=0) for name, spec in specs.items()}
  saved = {
    name: spec.replace(num_rounds=0) for name, spec in restored.specs.items()
  }
  if planned != saved:
    raise ValueError(
      f"the privacy settings {planned} differ from the checkpoint's "
      f"{saved}; resume with the same privacy, cohort and client settings."
    )
  return PrivacyAccountant(specs, delta, restored.num_rounds)


def privacy_scalars(setup: PrivacySetup) -> dict[str, float]:
  """Returns `privacy/epsilon`, and each client's for example-level DP."""
  epsilons = setup.accountant.epsilons()
  scalars = {"privacy/epsilon": max(epsilons.values(), default=0.0)}
  if privacy_mode(setup.config) == "example":
    for name, value in epsilons.items():
      scalars[f"privacy/{name}/epsilon"] = value
  return scalars


def privacy_summary(
  setup: PrivacySetup, stopped_at_budget: bool
) -> dict[str, Any]:
  """Returns the privacy entries of `final_metrics.json`."""
  accountant = setup.accountant
  summary = {
    "privacy_mode": privacy_mode(setup.config),
    "epsilon": accountant.epsilon(),
    "delta": accountant.delta,
    "noise_multiplier": setup.config.privacy.noise_multiplier,
    "accountant": privacy_option(setup.config, "accountant", "rdp"),
    "target_epsilon": privacy_option(setup.config, "target_epsilon", 0.0),
    "stopped_at_budget": stopped_at_budget,
  }
  if summary["privacy_mode"] == "example":
    summary["epsilon_per_client"] = accountant.epsilons()
  return summary
