"""FedNeuro on Fed-Heart-Disease: shared layer, hypernetwork-generated heads.

The target model is an MLP with one hidden layer of 16 units. Its hidden
layer is the shared backbone, averaged as in FedAvg; its output layer (the
head) is generated for each hospital by a hypernetwork (two hidden layers
of 64 units) from the hospital's private embedding (size 2), which never
leaves the hospital. Each hospital trains backbone, hypernetwork and
embedding jointly for 10 local SGD steps, with an L2 penalty of 1e-3 on the
embedding. The server applies the averaged backbone and hypernetwork deltas
with SGD at learning rate 1 (the paper uses Adam: set
--config.algorithm.server_optimizer=adam and a server learning rate such as
0.003).

The hypernetwork's output layer is affine, so its bias delta reveals the
head's gradient; run with privacy.mode="client" or
privacy.secure_aggregation=True (cohort.weighting="uniform") to protect it.

Run:
  python scripts/train.py --config=configs/fed_heart_disease_fedneuro.py \
      --workdir=/tmp/fed_heart_disease_fedneuro
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the FedNeuro config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease.py")
  )
  config.model.name = "mlp"
  config.model.hidden_sizes = (16,)
  config.algorithm.name = "fedneuro"
  config.algorithm.embedding_dim = 0  # 0 picks 1 + num_clients // 4.
  config.algorithm.hidden_sizes = (64, 64)
  config.algorithm.output_scale = 0.01
  config.algorithm.embedding_penalty = 1e-3
  # "embedding", or "embedding_and_summary" to append each site's mean
  # training features to its embedding.
  config.algorithm.descriptor = "embedding"
  config.algorithm.head_layer = ""  # "" picks the last Dense layer.
  config.algorithm.server_optimizer = "sgd"
  return config
