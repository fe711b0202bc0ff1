"""Federated LoRA on Fed-Heart-Disease rendered as clinical sentences.

Each patient record becomes a sentence such as "A 63-year-old man with
typical angina, blood pressure 145 mm Hg, cholesterol 233 mg/dl, ...",
encoded by the pretrained all-MiniLM-L6-v2 sentence encoder with a dense
head. The four hospitals train LoRA adapters (rank 8 on the attention
query and value projections) and the head with FedAvg. Only those leaves
are trained, sent and averaged. The hospitals, patients and splits are
the tabular task's (configs/fed_heart_disease.py).

Run:
  python scripts/train.py --config=configs/fed_heart_disease_lora.py \\
      --workdir=/tmp/fed_heart_disease_lora

--config.model.peft selects the method: "lora", "prompt" (soft prompts),
"scl" (Sequential Compression Layers) or "full" (every weight trained,
the byte baseline). configs/fed_heart_disease_prompt.py and _scl.py set
those methods' own learning rates. --config.model.num_layers=2 keeps only
the first two pretrained layers, about three times faster on a CPU.
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the federated LoRA config on the clinical sentences."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease.py")
  )
  config.num_rounds = 15
  config.eval_every = 5
  config.checkpoint_every = 15

  config.data = ml_collections.ConfigDict()
  config.data.name = "fed_heart_disease_text"
  config.data.split_seed = 42
  config.data.test_fraction = 0.34
  config.data.max_length = 68
  config.data.target = "binary"

  config.model = ml_collections.ConfigDict()
  config.model.name = "minilm"
  config.model.library = "flax"
  config.model.peft = "lora"
  config.model.num_layers = 6
  config.model.lora_rank = 8
  config.model.lora_alpha = 16.0
  config.model.lora_targets = ("query", "value")
  config.model.num_prompts = 8
  config.model.scl_rank = 32
  config.model.scl_train_down_projection = False

  config.client.optimizer = "adam"
  config.client.learning_rate = 3e-3
  config.client.num_local_steps = 4
  config.client.batch_size = 8
  return config
