"""Builds an algorithm from an `ml_collections` config.

The config sections read here are `algorithm`, `client`, `server`, `cohort`
and `privacy`; `configs/fed_heart_disease.py` shows every field with its
default. Learning rates can follow a schedule over rounds: `schedule` is
"constant", "exponential_decay" (`lr * decay_rate ** (round /
transition_rounds)`) or "cosine" (cosine decay to zero over `num_rounds`).

`privacy.mode` selects differential privacy and `privacy.secure_aggregation`
the secure sum (a config without a `privacy` section trains without either);
`fedjax_med.algorithms.privacy_wiring` documents what each setting selects.

`client.loss` names the local training loss (default "cross_entropy"; see
`fedjax_med.losses.registry` for the others), and `client.loss_options.<loss>`
contains its options, e.g. `--config.client.loss=focal
--config.client.loss_options.focal.gamma=1.0`. Losses that need class
frequencies get the global training counts per class, summed from the
clients' label histograms (`fedjax_med.losses.global_class_counts`). Under the
"pooled" and "local" baselines these are the counts of the data they train on.

`algorithm.name="fedtail"` reads `algorithm.rho`, `algorithm.matching_weight`
and `algorithm.tail_fraction` (defaults in `fedtail.FedTailConfig`).

`compression.uplink` and `compression.downlink` each name a compressor and
its options (`fedjax_med.compression.registry`), applied by every
FedAvg-family algorithm; an absent section means no compression.

`cohort.num_devices` shards every round's cohort over the first that many
devices (`fedjax_med.core.sharding.client_mesh`); 0 or 1 runs on one device.
With `cohort.clients_per_chunk = 0` and `cohort.memory_budget_mb > 0`, the
chunk size is the largest whose compiled round has a peak of at most that
many MB per device (`chunk_for_memory_budget`).
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import ml_collections
import optax

from fedjax_med.algorithms import fedavg as fedavg_lib
from fedjax_med.algorithms import fedopt, fedprox, fedtail, scaffold
from fedjax_med.algorithms.privacy_wiring import privacy_pieces
from fedjax_med.algorithms.settings import CompressionConfig
from fedjax_med.compression import registry as compression_registry
from fedjax_med.core import memory, sharding
from fedjax_med.core.algorithm import FederatedAlgorithm
from fedjax_med.data.federated_data import FederatedData
from fedjax_med.losses import global_class_counts, make_loss
from fedjax_med.losses.long_tail import LossFn
from fedjax_med.models.base import Model

# Server optimizer behind each FedOpt-style name.
_FEDOPT_SERVER = {
  "fedavgm": "momentum",
  "fedadagrad": "adagrad",
  "fedadam": "adam",
  "fedyogi": "yogi",
}
# Methods for heterogeneous sites live in their own modules, each with a
# `from_config(config, model, data, *, client, cohort, server_learning_rate,
# aggregator, dataset_name) -> FederatedAlgorithm` that reads its options
# from `config.algorithm`. They are imported when first asked for.
_MODULE_ALGORITHMS = {
  "fedbn": "fedjax_med.algorithms.fedbn",
  "fedstein": "fedjax_med.algorithms.fedstein",
  "univarfl": "fedjax_med.algorithms.univarfl",
  "moon": "fedjax_med.algorithms.moon",
  "ditto": "fedjax_med.algorithms.ditto",
  "pfedhn": "fedjax_med.algorithms.pfedhn",
  "fedneuro": "fedjax_med.algorithms.fedneuro",
  "fedvr": "fedjax_med.algorithms.fedvr",
  "fedalign": "fedjax_med.algorithms.fedalign",
  "qfedavg": "fedjax_med.algorithms.qfedavg",
  "afl": "fedjax_med.algorithms.afl",
  "newton": "fedjax_med.algorithms.newton",
  "fedns": "fedjax_med.algorithms.fedns",
  "flens": "fedjax_med.algorithms.flens",
  "fedhypevae": "fedjax_med.algorithms.fedhypevae",
  "dpsgd": "fedjax_med.decentralized.algorithms",
  "choco_sgd": "fedjax_med.decentralized.algorithms",
}
ALGORITHM_NAMES = (
  "fedavg",
  "fedprox",
  "scaffold",
  "fedtail",
  *_FEDOPT_SERVER,
  *_MODULE_ALGORITHMS,
)
SCHEDULES = ("constant", "exponential_decay", "cosine")


def make_schedule(
  section: ml_collections.ConfigDict, num_rounds: int, name: str
) -> optax.Schedule:
  """Builds a learning-rate schedule over rounds from a config section."""
  learning_rate = section.learning_rate
  if not learning_rate > 0:
    raise ValueError(
      f"{name}.learning_rate={learning_rate} must be positive; pass e.g. "
      f"--config.{name}.learning_rate=0.1."
    )
  kind = section.get("schedule", "constant")
  if kind == "constant":
    return optax.constant_schedule(learning_rate)
  if kind == "exponential_decay":
    return optax.exponential_decay(
      learning_rate,
      transition_steps=section.get("transition_rounds", 10),
      decay_rate=section.get("decay_rate", 0.5),
    )
  if kind == "cosine":
    return optax.cosine_decay_schedule(learning_rate, max(num_rounds, 1))
  raise ValueError(
    f"{name}.schedule={kind!r} is unknown; use one of {SCHEDULES}."
  )


def make_client_loss(
  config: ml_collections.ConfigDict, data: FederatedData
) -> LossFn:
  """Builds the per-example loss named by `config.client.loss`.

  A config without `client.loss` trains with cross-entropy. Options come
  from `client.loss_options.<loss name>` when that section exists.

  Raises:
    ValueError: For an unknown loss or option, or an invalid option value.
  """
  name = config.client.get("loss", "cross_entropy")
  sections = config.client.get("loss_options", None)
  options = {}
  if sections is not None and name in sections:
    options = dict(sections[name])
  counts = global_class_counts(data.train, data.num_classes)
  return make_loss(name, counts, **options)


def fedtail_config(config: ml_collections.ConfigDict) -> fedtail.FedTailConfig:
  """Reads FEDTAIL's settings from `config.algorithm`, with defaults."""
  defaults = fedtail.FedTailConfig()
  section = config.algorithm
  return fedtail.FedTailConfig(
    rho=float(section.get("rho", defaults.rho)),
    matching_weight=float(
      section.get("matching_weight", defaults.matching_weight)
    ),
    tail_fraction=float(section.get("tail_fraction", defaults.tail_fraction)),
  )


def compression_config(
  config: ml_collections.ConfigDict,
) -> CompressionConfig:
  """Reads `config.compression`'s uplink and downlink compressors.

  Raises:
    ValueError: For an invalid compressor section, or uplink compression
      together with secure aggregation, whose ring encoding replaces the
      client's message.
  """
  section = config.get("compression", None)
  if section is None:
    return CompressionConfig()
  links = {}
  for link in ("uplink", "downlink"):
    options = section.get(link, None)
    links[link] = None
    if not compression_registry.is_identity(options):
      links[link] = compression_registry.make_compressor(
        options, where=f"compression.{link}"
      )
  privacy = config.get("privacy", None)
  secure = privacy is not None and privacy.get("secure_aggregation", False)
  if secure and links["uplink"] is not None:
    raise ValueError(
      f"compression.uplink.name={section.uplink.name!r} with "
      "privacy.secure_aggregation=True: the secure sum needs every "
      "client's delta as ring integers of the same length, and it already "
      "quantizes them to privacy.secagg_bits bits; set "
      "compression.uplink.name='identity' and lower secagg_bits instead."
    )
  return CompressionConfig(**links)


def build_algorithm(
  config: ml_collections.ConfigDict, model: Model, data: FederatedData
) -> FederatedAlgorithm:
  """Returns the configured algorithm for `data`'s population of clients.

  Raises:
    ValueError: For an unknown algorithm name, a non-positive learning rate,
      a cohort the population cannot supply, invalid privacy settings
      (see `privacy_pieces`), more devices than present, or a memory
      budget below what one client per chunk needs.
  """
  name = config.algorithm.name
  if name not in ALGORITHM_NAMES:
    raise ValueError(
      f"algorithm.name={name!r} is unknown; use one of {ALGORITHM_NAMES}, "
      "or 'pooled' / 'local' for the baselines."
    )
  cohort = cohort_config(config)
  budget_mb = config.cohort.get("memory_budget_mb", 0)
  if budget_mb and not cohort.clients_per_chunk:
    cohort = cohort._replace(
      clients_per_chunk=chunk_for_memory_budget(
        config, model, data, cohort, budget_mb
      )
    )
  return _build(config, model, data, cohort)


def cohort_config(config: ml_collections.ConfigDict) -> fedavg_lib.CohortConfig:
  """Reads `config.cohort`, building the device mesh it names."""
  section = config.cohort
  return fedavg_lib.CohortConfig(
    clients_per_round=section.clients_per_round,
    sampling=section.sampling,
    poisson_rate=section.get("poisson_rate") or None,
    clients_per_chunk=section.get("clients_per_chunk") or None,
    weighting=section.weighting,
    mesh=sharding.client_mesh(section.get("num_devices", 0)),
  )


def chunk_for_memory_budget(
  config: ml_collections.ConfigDict,
  model: Model,
  data: FederatedData,
  cohort: fedavg_lib.CohortConfig,
  budget_mb: float,
) -> int:
  """Picks the largest `clients_per_chunk` whose round fits `budget_mb`.

  The round is compiled, not run, at a few chunk sizes (see
  `fedjax_med.core.memory.chunk_for_budget`). The budget bounds the peak
  memory per device that XLA reports for the compiled round: its inputs
  (the state and the data), outputs and temporaries.
  """
  if budget_mb < 0:
    raise ValueError(
      f"cohort.memory_budget_mb={budget_mb} must not be negative; use 0 to "
      "size chunks with cohort.clients_per_chunk alone."
    )
  sample_x = jax.ShapeDtypeStruct(
    (1, *data.train.x.shape[2:]), data.train.x.dtype
  )
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), sample_x)
  if config.get("float64", False):
    variables = jax.tree.map(
      lambda v: (
        jax.ShapeDtypeStruct(v.shape, jnp.float64)
        if jnp.issubdtype(v.dtype, jnp.floating)
        else v
      ),
      variables,
    )

  def bytes_at(chunk: int) -> int:
    algorithm = _build(
      config, model, data, cohort._replace(clients_per_chunk=chunk)
    )
    return memory.round_peak_bytes(algorithm, variables, data, cohort.mesh)

  num_devices = 1 if cohort.mesh is None else cohort.mesh.devices.size
  capacity = -(-cohort.clients_per_round // num_devices)
  return memory.chunk_for_budget(
    bytes_at, capacity, int(budget_mb * memory.MIB)
  )


def _build(
  config: ml_collections.ConfigDict,
  model: Model,
  data: FederatedData,
  cohort: fedavg_lib.CohortConfig,
) -> FederatedAlgorithm:
  name = config.algorithm.name
  aggregator, dp_sgd_config = privacy_pieces(config, model, data, cohort)
  client = fedavg_lib.ClientConfig(
    learning_rate=make_schedule(config.client, config.num_rounds, "client"),
    num_local_steps=config.client.num_local_steps,
    batch_size=config.client.batch_size,
    optimizer=config.client.optimizer,
    momentum=config.client.get("momentum", 0.9),
    loss_fn=make_client_loss(config, data),
    dp_sgd=dp_sgd_config,
    compression=compression_config(config),
  )
  server_lr = make_schedule(config.server, config.num_rounds, "server")
  common = dict(client=client, cohort=cohort, dataset_name=data.name)

  if name in _MODULE_ALGORITHMS:
    module = importlib.import_module(_MODULE_ALGORITHMS[name])
    return module.from_config(
      config,
      model,
      data,
      server_learning_rate=server_lr,
      aggregator=aggregator,
      **common,
    )

  if name == "fedavg":
    return fedavg_lib.fedavg(
      model,
      data.num_clients,
      server_learning_rate=server_lr,
      aggregator=aggregator,
      **common,
    )
  if name == "fedprox":
    return fedprox.fedprox(
      model,
      data.num_clients,
      mu=config.algorithm.mu,
      server_learning_rate=server_lr,
      aggregator=aggregator,
      **common,
    )
  if name == "fedtail":
    return fedtail.fedtail(
      model,
      data.num_clients,
      class_counts=global_class_counts(data.train, data.num_classes),
      config=fedtail_config(config),
      server_learning_rate=server_lr,
      aggregator=aggregator,
      **common,
    )
  if name == "scaffold":
    return scaffold.scaffold(
      model, data.num_clients, server_learning_rate=server_lr, **common
    )
  return fedopt.fedopt(
    model,
    data.num_clients,
    server_optimizer_name=_FEDOPT_SERVER[name],
    server_learning_rate=server_lr,
    momentum=config.server.get("momentum", 0.9),
    b1=config.server.get("b1", 0.9),
    b2=config.server.get("b2", 0.99),
    tau=config.server.get("tau", 1e-3),
    aggregator=aggregator,
    **common,
  )
