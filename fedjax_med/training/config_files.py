"""Loading `get_config()` files by path, for configs built on other configs.

Config files are plain modules that `ml_collections.config_flags` loads by
path, so a derived config cannot import its base as a package module unless
the repository root happens to be on `sys.path`. `load_config_file` loads the
base by path instead, wherever the command runs from.
"""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections


def load_config_file(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """Returns `get_config()` of the config file at `path`.

  Raises:
    FileNotFoundError: If `path` does not exist.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(
      f"config file {str(path)!r} not found; pass the path of a file with "
      "a get_config() function, e.g. configs/fed_heart_disease.py."
    )
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
