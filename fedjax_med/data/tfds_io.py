"""Writes a `FederatedData` as a local TFDS dataset and reads it back.

The dataset is built by `FederatedArrays`, a `GeneratorBasedBuilder` that
writes array_record files, one split per client and side, such as
`cleveland_train` and `cleveland_test`. Each dataset is a builder config, so
the files sit under `<data_dir>/federated_arrays/<name>/1.0.0/`. Reading uses
`tfds.builder_from_directory` and random-access data sources, which need
neither TensorFlow nor the builder class. Other tools can read the same files
with `tfds.data_source("federated_arrays/<name>", split=..., data_dir=...)`.

Facts about tensorflow-datasets 4.9.10 without TensorFlow that shape this
module:
- `tfds.load` and `as_dataset` import TensorFlow, so they are never called.
- Data sources return examples in a key-hashed order, not in write order, so
  every example stores its row `index` and reading sorts on it.
- A split cannot be empty. Empty client splits are not written, and the
  metadata records their size as zero.
- The builder class is skipped in the TFDS registry. A registered class
  would make `tfds.data_source` look up the config by name in the class
  instead of reading the files.
"""

from __future__ import annotations

import functools
import pathlib
import re

import numpy as np

from fedjax_med.data.federated_data import FederatedData, stack_clients

BUILDER_NAME = "federated_arrays"
DATASET_VERSION = "1.0.0"
_SIDES = ("train", "test")


def _import_tfds():
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(
      "writing or reading TFDS datasets needs tensorflow-datasets, which is "
      "not installed; run `pip install -e '.[tfds]'` (TensorFlow is not "
      "needed)."
    ) from e
  return tfds


@functools.cache
def _builder_class():
  """Defines the builder class on first use, keeping tfds out of imports."""
  tfds = _import_tfds()

  class FederatedArrays(
    tfds.core.GeneratorBasedBuilder, skip_registration=True
  ):
    """Stores the clients of one `FederatedData`, one split per client side."""

    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES = {DATASET_VERSION: "Clients as array_record splits."}

    def __init__(self, *, data: FederatedData, **kwargs):
      self._data = data
      super().__init__(**kwargs)

    def _info(self):
      data = self._data
      return tfds.core.DatasetInfo(
        builder=self,
        description=f"Clients of the federated dataset {data.name!r}.",
        features=tfds.features.FeaturesDict(
          {
            "x": tfds.features.Tensor(
              shape=data.feature_shape, dtype=np.float32
            ),
            "y": tfds.features.ClassLabel(num_classes=data.num_classes),
            "index": tfds.features.Scalar(dtype=np.int64),
          }
        ),
        metadata=tfds.core.MetadataDict(_metadata(data)),
      )

    def _split_generators(self, dl_manager):
      del dl_manager  # Everything comes from memory.
      generators = {}
      for k, split_name in enumerate(split_names(self._data.client_names)):
        for side in _SIDES:
          arrays = getattr(self._data, side)
          if arrays.num_examples[k] > 0:
            generators[f"{split_name}_{side}"] = self._generate_examples(
              *arrays.client(k)
            )
      return generators

    def _generate_examples(self, x, y):
      for i in range(len(y)):
        yield i, {"x": x[i], "y": int(y[i]), "index": i}

  return FederatedArrays


def split_names(client_names: tuple[str, ...]) -> list[str]:
  """Turns client names into unique lowercase split-name prefixes.

  "VA Long Beach" becomes "va_long_beach"; a name that is empty or clashes
  with an earlier one gets the client index appended.
  """
  names = []
  for k, client_name in enumerate(client_names):
    name = re.sub(r"[^a-z0-9]+", "_", client_name.lower()).strip("_")
    if not name or name in names:
      name = f"{name or 'client'}_{k}"
    names.append(name)
  return names


def _config_name(name: str) -> str:
  if not re.fullmatch(r"[A-Za-z0-9_]+", name):
    raise ValueError(
      f"dataset name {name!r} cannot name a TFDS config; use letters, digits "
      "and underscores, for example data.replace(name='my_dataset')."
    )
  return name


def _metadata(data: FederatedData) -> dict:
  return {
    "name": data.name,
    "client_names": list(data.client_names),
    "split_names": split_names(data.client_names),
    "feature_names": list(data.feature_names),
    "feature_shape": list(data.feature_shape),
    "num_classes": data.num_classes,
    "num_examples": {
      side: getattr(data, side).num_examples.tolist() for side in _SIDES
    },
    "max_examples": {side: getattr(data, side).max_examples for side in _SIDES},
  }


def write_tfds(
  data: FederatedData, data_dir: str | pathlib.Path, *, overwrite: bool = False
) -> str:
  """Writes every client's train and test rows as a TFDS dataset.

  Args:
    data: The dataset. `data.name` becomes the builder config name.
    data_dir: Root folder of TFDS datasets, created if missing.
    overwrite: Whether to replace an existing dataset of the same name.

  Returns:
    The folder of the dataset,
    `<data_dir>/federated_arrays/<name>/1.0.0`.

  Raises:
    ImportError: If tensorflow-datasets is not installed.
    ValueError: If `data.name` is not a valid config name.
    FileExistsError: If the dataset exists and `overwrite` is False.
  """
  config_name = _config_name(data.name)
  tfds = _import_tfds()
  target = pathlib.Path(data_dir) / BUILDER_NAME / config_name / DATASET_VERSION
  if target.exists() and not overwrite:
    raise FileExistsError(
      f"a TFDS dataset already exists at {target}; pass overwrite=True or "
      "choose another data_dir or dataset name."
    )
  builder = _builder_class()(
    data=data,
    data_dir=str(data_dir),
    config=tfds.core.BuilderConfig(name=config_name),
    file_format="array_record",
  )
  mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(
      try_download_gcs=False, download_mode=mode
    )
  )
  return str(builder.data_dir)


def _find_dataset(data_dir: pathlib.Path, name: str | None) -> pathlib.Path:
  root = data_dir / BUILDER_NAME
  names = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
  if not names:
    raise FileNotFoundError(
      f"no datasets written by write_tfds under {data_dir}; write one with "
      "write_tfds(data, data_dir) or pass the data_dir used then."
    )
  if name is None:
    if len(names) != 1:
      raise ValueError(
        f"{root} contains datasets {names}; pass name= to pick one."
      )
    name = names[0]
  path = root / name / DATASET_VERSION
  if not path.is_dir():
    raise FileNotFoundError(
      f"no TFDS dataset {name!r} at {path}; the datasets under {root} are "
      f"{names}. Write one with write_tfds(data, data_dir)."
    )
  return path


def read_tfds(
  data_dir: str | pathlib.Path, name: str | None = None
) -> FederatedData:
  """Reads a dataset written by `write_tfds` back into a `FederatedData`.

  Args:
    data_dir: The `data_dir` passed to `write_tfds`.
    name: The dataset name. It may be omitted when `data_dir` contains only
      one dataset.

  Returns:
    The `FederatedData` with the same arrays, padded sizes, names and
    metadata as the one written. Padding rows are zeros, as `stack_clients`
    writes them.

  Raises:
    ImportError: If tensorflow-datasets is not installed.
    FileNotFoundError: If `data_dir` or the dataset does not exist.
    ValueError: If `name` is None and `data_dir` contains several datasets.
  """
  data_dir = pathlib.Path(data_dir)
  if not data_dir.is_dir():
    raise FileNotFoundError(
      f"TFDS data_dir {data_dir} does not exist; pass the folder given to "
      "write_tfds."
    )
  path = _find_dataset(data_dir, name)
  tfds = _import_tfds()
  builder = tfds.builder_from_directory(str(path))
  metadata = builder.info.metadata
  sources = builder.as_data_source()
  feature_shape = tuple(metadata["feature_shape"])

  stacked = {}
  for side in _SIDES:
    clients = []
    for k, split_name in enumerate(metadata["split_names"]):
      num_examples = metadata["num_examples"][side][k]
      x = np.zeros((num_examples, *feature_shape), np.float32)
      y = np.zeros((num_examples,), np.int32)
      if num_examples:
        source = sources[f"{split_name}_{side}"]
        if len(source) != num_examples:
          raise ValueError(
            f"split {split_name}_{side} in {path} contains {len(source)} "
            f"examples, but its metadata records {num_examples}; rewrite the "
            "dataset with write_tfds(..., overwrite=True)."
          )
        examples = source.__getitems__(list(range(len(source))))
        index = np.array([e["index"] for e in examples])
        x[index] = np.stack([e["x"] for e in examples])
        y[index] = [e["y"] for e in examples]
      clients.append((x, y))
    stacked[side] = stack_clients(
      clients, max_examples=metadata["max_examples"][side]
    )

  return FederatedData(
    train=stacked["train"],
    test=stacked["test"],
    client_names=tuple(metadata["client_names"]),
    feature_names=tuple(metadata["feature_names"]),
    num_classes=int(metadata["num_classes"]),
    name=metadata["name"],
  )
