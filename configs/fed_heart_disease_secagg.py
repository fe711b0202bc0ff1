"""Secure aggregation across the four Fed-Heart-Disease hospitals.

The server receives only masked updates and their sum. Each hospital clips
its flattened delta to L2 norm 1, quantizes it into the ring of integers
modulo 2^32 and adds pairwise masks expanded from seeds it agreed with every
other hospital by an X25519 key exchange and HKDF. The masks cancel in the
sum. Every round each hospital independently drops out with probability
0.25 after the key exchange, before it sends its masked input. The server
removes a dropped hospital's pairwise masks with its seeds, which the
protocol recovers from the survivors' Shamir shares. (The compiled round
uses the recovered values directly; `SecureAggregationSession` runs the
sharing itself.) With threshold 3, a round in which two or more
hospitals drop (26% of rounds at this rate) aborts and leaves the model
unchanged. Three of four is a majority, so no two hospitals together hold
enough shares to reconstruct another's seeds. Every hospital counts with
weight 1, because the secure sum carries no example counts.

Secure aggregation alone hides individual updates from the server but
gives no differential privacy, because the released sum carries no noise.
Distributed DP adds it: each hospital adds its share of Gaussian noise
before masking, so the sum carries noise of standard deviation
`noise_multiplier * clip_norm` once, and the accountant counts each
hospital as the unit. With only four
hospitals the guarantee is weak (about epsilon 57 at delta 1e-5 after 50
rounds at noise multiplier 1) and costs accuracy (about 0.70 against 0.83).

Run, without and with distributed DP:
  python scripts/train.py --config=configs/fed_heart_disease_secagg.py \
      --workdir=/tmp/fed_heart_disease_secagg
  python scripts/train.py --config=configs/fed_heart_disease_secagg.py \
      --workdir=/tmp/fed_heart_disease_secagg_dp \
      --config.privacy.mode=client --config.privacy.noise_multiplier=1.0
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the secure aggregation config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("fed_heart_disease.py")
  )
  config.cohort.weighting = "uniform"

  config.privacy.mode = "none"
  config.privacy.clip_norm = 1.0
  config.privacy.noise_multiplier = 1.0  # Used with privacy.mode="client".
  config.privacy.secure_aggregation = True
  config.privacy.secagg_bits = 32
  config.privacy.secagg_threshold = 3
  config.privacy.secagg_dropout_rate = 0.25
  return config
