"""Reconstruction metrics, plots and the audit runner."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import image as mpimg

from fedjax_med.privacy.audit import plots
from fedjax_med.privacy.audit.reconstruction import (
  match_reconstructions,
  reconstruction_error,
)
from fedjax_med.privacy.audit.runner import AuditSetting, run_audit


def test_reconstruction_error_ignores_order():
  rng = np.random.default_rng(0)
  true = rng.normal(size=(5, 13))
  reconstructed = true + 0.01 * rng.normal(size=true.shape)
  order = rng.permutation(5)
  direct = reconstruction_error(reconstructed, true)
  shuffled = reconstruction_error(reconstructed[order], true)
  assert shuffled["mse"] == pytest.approx(direct["mse"])
  assert shuffled["true_index"] == order.tolist()


def test_psnr_closed_form():
  true = np.zeros((2, 8, 8, 1))
  reconstructed = np.full_like(true, 0.1)  # MSE 0.01 on a range of 1.
  error = reconstruction_error(reconstructed, true, data_range=1.0)
  assert error["mse"] == pytest.approx(0.01)
  assert error["psnr"] == pytest.approx(20.0)


def test_matching_pairs_nearest_records():
  true = np.asarray([[0.0, 0.0], [10.0, 10.0], [-5.0, 3.0]])
  reconstructed = np.asarray([[9.0, 9.5], [0.5, -0.5]])
  rec_index, true_index = match_reconstructions(reconstructed, true)
  pairs = dict(zip(rec_index.tolist(), true_index.tolist(), strict=True))
  assert pairs == {0: 1, 1: 0}


def test_matching_rejects_more_reconstructions():
  with pytest.raises(ValueError, match="3 reconstructions for 2 true"):
    match_reconstructions(np.zeros((3, 4)), np.zeros((2, 4)))


def read_png(path):
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  return mpimg.imread(path)


def test_plots_write_pngs(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.random((3, 8, 8, 1))
  records = rng.normal(size=(2, 4))
  plots.plot_image_reconstructions(
    images, images[::-1], str(tmp_path / "images.png"), title="digits"
  )
  plots.plot_record_reconstructions(
    records,
    records + 0.1,
    str(tmp_path / "records.png"),
    feature_names=("age", "sex", "chol", "thalach"),
  )
  plots.plot_roc_curves(
    {"no DP": {"fpr": [0, 0.2, 1], "tpr": [0, 0.7, 1], "auc": 0.75}},
    str(tmp_path / "roc.png"),
  )
  for name in ("images.png", "records.png", "roc.png"):
    pixels = read_png(tmp_path / name)
    assert pixels.ndim == 3
    assert np.ptp(pixels) > 0.5  # Something was drawn.


def test_run_audit_reports_every_number():
  setting = AuditSetting(
    batch_sizes=(1,),
    inversion_datasets=("fed_heart_disease",),
    num_inversion_steps=1000,
    num_restarts=2,
    membership=False,
  )
  results = run_audit(setting)
  prefix = "inversion/fed_heart_disease/batch_1"
  assert results[f"{prefix}/mse"] < 1e-6
  assert results[f"{prefix}/baseline_mse"] > 0.01
  assert results[f"{prefix}/label_accuracy"] == 1.0

  noisy = run_audit(setting._replace(mode="example", noise_multiplier=2.0))
  assert noisy[f"{prefix}/mse"] > 100 * results[f"{prefix}/mse"]


@pytest.mark.parametrize(
  "setting, message",
  [
    (AuditSetting(mode="local"), "mode='local'"),
    (AuditSetting(inversion_datasets=("mnist",)), "'mnist'"),
    (
      AuditSetting(secure_aggregation=True, num_aggregated_clients=1),
      "num_aggregated_clients=1",
    ),
    (
      AuditSetting(
        secure_aggregation=True,
        num_aggregated_clients=5,
        inversion_datasets=("fed_heart_disease",),
      ),
      "num_aggregated_clients=5 exceeds the 4 clients",
    ),
  ],
)
def test_run_audit_rejects_invalid_settings(setting, message):
  with pytest.raises(ValueError, match=message):
    run_audit(setting._replace(membership=False))
