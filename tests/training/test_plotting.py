"""Per-site metric plots written as PNG files."""

import math

import numpy as np
from matplotlib import image as mpimg

from fedjax_med.training import plotting
from fedjax_med.training.plotting import plot_client_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SITES = ("cleveland", "hungary", "switzerland", "va")


def _records(num_rounds=6):
  records = []
  for r in range(1, num_rounds + 1):
    record = {"round": r, "train/loss": 1.0 / r}
    for k, site in enumerate(SITES):
      record[f"eval/{site}/accuracy"] = 0.5 + 0.05 * r - 0.02 * k
    record["eval/pooled/accuracy"] = 0.5 + 0.045 * r
    records.append(record)
  records[2]["eval/switzerland/accuracy"] = None  # NaN as written to JSON.
  return records


def test_plot_writes_png(tmp_path):
  path = tmp_path / "accuracy_per_site.png"
  plot_client_metrics(_records(), "accuracy", str(path), SITES)
  data = path.read_bytes()
  assert data.startswith(PNG_MAGIC)
  assert len(data) > 1000
  pixels = mpimg.imread(str(path))
  # figsize (7, 4.5) inches at 120 dpi.
  assert pixels.shape[:2] == (540, 840)
  assert np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0).shape[0] > 4


def test_plot_without_values_still_writes(tmp_path):
  records = [{"round": 1, "eval/cleveland/auroc": math.nan}]
  path = tmp_path / "auroc_per_site.png"
  plot_client_metrics(records, "auroc", str(path), ["cleveland"])
  assert path.read_bytes().startswith(PNG_MAGIC)


def test_series_keeps_last_of_repeated_round():
  # A resumed run that repeats rounds 2 and 3 writes them a second time.
  records = [
    {"round": 1, "eval/a/loss": 0.9},
    {"round": 2, "eval/a/loss": 0.8},
    {"round": 3, "eval/a/loss": 0.5},
    {"round": 2, "eval/a/loss": 0.7},
    {"round": 3, "eval/a/loss": 0.6},
  ]
  rounds, values = plotting._series(records, "eval/a/loss")
  assert rounds == [1, 2, 3]
  assert values == [0.9, 0.7, 0.6]


def test_series_null_is_gap():
  records = [
    {"round": 1, "eval/a/auroc": 0.6},
    {"round": 2, "train/loss": 0.3},
    {"round": 3, "eval/a/auroc": None},
    {"round": 4, "eval/a/auroc": 0.7},
  ]
  rounds, values = plotting._series(records, "eval/a/auroc")
  assert rounds == [1, 3, 4]
  assert values[0] == 0.6
  assert math.isnan(values[1])
  assert values[2] == 0.7
