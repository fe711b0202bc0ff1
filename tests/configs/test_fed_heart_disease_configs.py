"""Each per-method config is the default one with only its method changed."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Config file suffix -> the flattened fields that differ from the default.
EXPECTED_CHANGES = {
  "fedprox": {"algorithm.name": "fedprox"},
  "scaffold": {"algorithm.name": "scaffold"},
  "fedadam": {"algorithm.name": "fedadam", "server.learning_rate": 0.3},
  "pooled": {"algorithm.name": "pooled"},
  "local": {"algorithm.name": "local"},
}


def _load(name):
  path = ROOT / "configs" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _flatten(tree, prefix=""):
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


@pytest.mark.parametrize("method", sorted(EXPECTED_CHANGES))
def test_config_changes_only_method_fields(method):
  base = _flatten(_load("fed_heart_disease").to_dict())
  derived = _flatten(_load(f"fed_heart_disease_{method}").to_dict())

  assert set(derived) == set(base)
  changed = {k: v for k, v in derived.items() if v != base[k]}
  assert changed == EXPECTED_CHANGES[method]


def test_fedprox_config_sets_mu():
  assert _load("fed_heart_disease_fedprox").algorithm.mu == 0.1


def test_config_flags_loads_derived_config():
  # config_flags loads the file by path from the working directory, the way
  # scripts/train.py does.
  code = (
    "from absl import flags\n"
    "from ml_collections import config_flags\n"
    "c = config_flags.DEFINE_config_file('config')\n"
    "flags.FLAGS(['x', '--config=configs/fed_heart_disease_fedadam.py'])\n"
    "print(c.value.algorithm.name, c.value.server.learning_rate)\n"
  )
  result = subprocess.run(
    [sys.executable, "-c", code],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ["fedadam", "0.3"]
