"""FedAlign with the patch-convolution CNN on multi-domain digits.

Every setting but the method is `digits_multidomain.py`'s: six sites that
see label-stratified digits through different fixed acquisitions. The
FedAlign fields are the released code's defaults (see
`fedjax_med.algorithms.fedalign`). `algorithm.style_source="in_batch"`
switches to the released code's in-batch MixStyle.

Run:
  python scripts/train.py --config=configs/digits_multidomain_fedalign.py \
      --workdir=/tmp/digits_multidomain_fedalign
"""

import pathlib

import ml_collections

from fedjax_med.training.config_files import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """Returns the FedAlign multi-domain digits config."""
  config = load_config_file(
    pathlib.Path(__file__).with_name("digits_multidomain.py")
  )
  config.algorithm.name = "fedalign"
  config.algorithm.style_source = "cross_client"
  config.algorithm.style_fraction = 0.1
  config.algorithm.mix_alpha = 0.1
  config.algorithm.mix_probability = 1.0
  config.algorithm.supcon_weight = 0.1
  config.algorithm.js_weight = 0.1
  config.algorithm.consistency_weight = 0.1
  config.algorithm.temperature = 0.1
  config.algorithm.standard_supcon = False
  return config
