"""Federated Sequential Compression Layers on the clinical sentences.

The federated LoRA setup (`fed_heart_disease_lora.py`) with an SCL
bottleneck `h + W2 gelu(W1 h)` of width 32 inside every feed-forward block
in place of LoRA. The hospitals train and send only `W1`, `W2` and the
head. The layer is a reconstruction of the method, described in
`fedjax_med/models/text/adapters.py`.

Run:
  python scripts/train.py --config=configs/fed_heart_disease_scl.py \\
      --workdir=/tmp/fed_heart_disease_scl
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the federated SCL config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease_lora.py")
  )
  config.model.peft = "scl"
  config.model.scl_rank = 32
  return config
