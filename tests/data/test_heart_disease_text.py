"""Tests for Fed-Heart-Disease rendered as tokenized clinical sentences."""

import numpy as np
import pytest

from fedjax_med.data import load_dataset
from fedjax_med.data.heart_disease import read_prepared_frame
from fedjax_med.data.heart_disease_text import (
  load_fed_heart_disease_text,
  render_sentence,
  render_sentences,
  token_lengths,
)
from fedjax_med.models.text import tokenize


@pytest.fixture(scope="module")
def frame():
  return read_prepared_frame()


@pytest.fixture(scope="module")
def text_data():
  return load_fed_heart_disease_text()


@pytest.fixture(scope="module")
def tabular_data():
  return load_dataset("fed_heart_disease", standardize=False)


def test_first_record_sentence(frame):
  row = frame.iloc[0]
  assert row["age"] == 63
  assert render_sentence(row) == (
    "A 63-year-old man with typical angina, blood pressure 145 mm Hg, "
    "cholesterol 233 mg/dl, high fasting sugar, left ventricular "
    "hypertrophy on ECG, max heart rate 150, no exercise angina, "
    "ST depression 2.3."
  )


def test_sentences_carry_every_field(frame):
  sentences = render_sentences(frame)
  assert len(sentences) == len(frame) == 740
  for (_, row), sentence in zip(frame.iterrows(), sentences, strict=True):
    assert f"{row['age']:.0f}-year-old" in sentence
    assert f"max heart rate {row['thalach']:.0f}," in sentence
    assert sentence.endswith(f"ST depression {row['oldpeak']:.1f}.")
    if row["chol"] == 0:
      assert "cholesterol not recorded" in sentence
    else:
      assert f"cholesterol {row['chol']:.0f} mg/dl" in sentence
    assert "exercise angina" in sentence
    assert ("no exercise angina" in sentence) == (row["exang"] == 0)


def test_same_patients_as_tabular(text_data, tabular_data):
  assert text_data.client_names == tabular_data.client_names
  for split in ("train", "test"):
    text, tabular = getattr(text_data, split), getattr(tabular_data, split)
    np.testing.assert_array_equal(text.num_examples, tabular.num_examples)
    np.testing.assert_array_equal(text.y, tabular.y)


def test_tokens_encode_the_sentence(text_data, tabular_data, frame):
  # Cleveland's first training row is the patient whose age and heart rate
  # match the tabular row.
  x, _ = text_data.train.client(0)
  ages, _ = tabular_data.train.client(0)
  row = frame[
    (frame["site"] == "Cleveland")
    & (frame["age"] == ages[0][0])
    & (frame["thalach"] == ages[0][5])
    & (frame["chol"] == ages[0][3])
  ].iloc[0]
  np.testing.assert_array_equal(
    x[0], tokenize([render_sentence(row)], max_length=68)[0]
  )


def test_fixed_shape_and_no_truncation(text_data):
  assert text_data.name == "fed_heart_disease_text"
  assert text_data.feature_shape == (2, 68)
  lengths = token_lengths(text_data)
  assert lengths.max() <= 66
  assert lengths.min() >= 40


def test_short_max_length_truncates():
  data = load_fed_heart_disease_text(max_length=16)
  assert data.feature_shape == (2, 16)
  assert np.all(token_lengths(data) == 16)


def test_unknown_target_raises():
  with pytest.raises(ValueError, match="target='grade'"):
    load_fed_heart_disease_text(target="grade")
