"""FedAvg on Fed-Heart-Disease with QSGD-compressed client deltas.

Every client quantizes its delta with QSGD at 16 levels per sign: 6 bits per
coordinate plus one float32 norm per parameter array, against 32 bits per
coordinate uncompressed. The server broadcasts the model uncompressed.
Every other setting is the default experiment's (`fed_heart_disease.py`).
`final_metrics.json` reports `total_uplink_bytes` and
`total_downlink_bytes`.

Other operators: set `compression.uplink.name` (or `downlink.name`) to
"top_k" (`fraction` or `k`, error feedback on by default), "low_rank"
(`rank`), "rotated_quantization" (`num_levels`) or "identity"; see
`fedjax_med/compression/registry.py`.

Run:
  python scripts/train.py --config=configs/fed_heart_disease_compressed.py \\
      --workdir=/tmp/fed_heart_disease_compressed
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the QSGD-uplink config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease.py")
  )
  config.compression = ml_collections.ConfigDict()
  config.compression.uplink = _section("qsgd")
  config.compression.downlink = _section("identity")
  return config


def _section(name: str) -> ml_collections.ConfigDict:
  """Returns a section with every operator's options; `name` picks one."""
  section = ml_collections.ConfigDict()
  section.name = name
  section.num_levels = 16  # qsgd, rotated_quantization.
  section.fraction = 0.1  # top_k, unless k > 0.
  section.k = 0  # top_k.
  section.rank = 1  # low_rank.
  # None: on for top_k and low_rank, off for the others.
  section.error_feedback = ml_collections.config_dict.placeholder(bool)
  return section
