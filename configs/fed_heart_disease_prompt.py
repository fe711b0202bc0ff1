"""Federated soft-prompt tuning on the Fed-Heart-Disease clinical sentences.

The federated LoRA setup (`fed_heart_disease_lora.py`) with 8 learned
prompt vectors prepended to the token states in place of LoRA: the
hospitals train and send only the prompts and the head.

Run:
  python scripts/train.py --config=configs/fed_heart_disease_prompt.py \\
      --workdir=/tmp/fed_heart_disease_prompt
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the federated soft-prompt config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease_lora.py")
  )
  config.model.peft = "prompt"
  config.model.num_prompts = 8
  return config
