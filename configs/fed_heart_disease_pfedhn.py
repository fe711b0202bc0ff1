"""pFedHN on Fed-Heart-Disease: a hypernetwork generates each hospital's model.

The hypernetwork (three hidden layers of 100 units) maps each hospital's
learned embedding (size 1 + 4 // 4 = 2) to the weights of its logistic
regression. Clients train the generated weights for 10 local SGD steps, the
server applies the averaged hypernetwork delta with SGD at learning rate
0.05, and each hospital updates its embedding with step size 0.01. The
evaluated global model is the one generated from the mean embedding; each
hospital's personal model is the one generated from its own embedding.

Run:
  python scripts/train.py --config=configs/fed_heart_disease_pfedhn.py \
      --workdir=/tmp/fed_heart_disease_pfedhn
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the pFedHN config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease.py")
  )
  config.algorithm.name = "pfedhn"
  config.algorithm.embedding_dim = 0  # 0 picks 1 + num_clients // 4.
  config.algorithm.hidden_sizes = (100, 100, 100)
  config.algorithm.output_scale = 0.01
  config.algorithm.embedding_learning_rate = 0.01
  config.algorithm.server_optimizer = "sgd"
  config.server.learning_rate = 0.05
  return config
