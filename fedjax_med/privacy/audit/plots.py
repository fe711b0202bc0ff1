"""PNG plots of the leakage audits.

Figures are drawn on matplotlib's Agg canvas through `matplotlib.figure.Figure`
rather than pyplot, so plotting needs no display and leaves the caller's
pyplot backend and open figures alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedjax_med.privacy.audit.reconstruction import match_reconstructions


def _paired(reconstructed: np.ndarray, true: np.ndarray):
  """Returns true records and their matched reconstructions, in pairs."""
  rec_index, true_index = match_reconstructions(reconstructed, true)
  return np.asarray(true)[true_index], np.asarray(reconstructed)[rec_index]


def plot_image_reconstructions(
  true: np.ndarray,
  reconstructed: np.ndarray,
  path: str,
  title: str | None = None,
) -> None:
  """Draws true images above their matched reconstructions.

  Args:
    true: Images `[num_true, height, width, channels]` with one channel
      (drawn in grey, 0 black to 1 white).
    reconstructed: `[num_reconstructed, height, width, channels]`, at most
      `num_true` images. Each is paired with a true image as in
      `reconstruction_error`.
    path: Output PNG path.
    title: Figure title, or None.
  """
  true, reconstructed = _paired(reconstructed, true)
  count = len(true)
  fig = Figure(figsize=(1.6 * count + 0.8, 3.6))
  FigureCanvasAgg(fig)
  axes = fig.subplots(2, count, squeeze=False)
  for column in range(count):
    for row, (images, label) in enumerate(
      ((true, "true"), (reconstructed, "reconstructed"))
    ):
      ax = axes[row, column]
      ax.imshow(images[column][..., 0], cmap="gray", vmin=0.0, vmax=1.0)
      ax.set_xticks([])
      ax.set_yticks([])
      if column == 0:
        ax.set_ylabel(label)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def plot_record_reconstructions(
  true: np.ndarray,
  reconstructed: np.ndarray,
  path: str,
  feature_names: Sequence[str] = (),
  title: str | None = None,
) -> None:
  """Draws each true record and its reconstruction as paired bars.

  Args:
    true: Standardized records `[num_true, num_features]`.
    reconstructed: `[num_reconstructed, num_features]`, at most `num_true`.
      Each is paired with a true record as in `reconstruction_error`.
    path: Output PNG path.
    feature_names: One name per feature for the x axis, or empty for
      column numbers.
    title: Figure title, or None.
  """
  true, reconstructed = _paired(reconstructed, true)
  count, num_features = true.shape
  names = list(feature_names) or [str(i) for i in range(num_features)]
  fig = Figure(figsize=(max(6.0, 0.55 * num_features), 2.6 * count + 0.6))
  FigureCanvasAgg(fig)
  axes = fig.subplots(count, 1, squeeze=False)[:, 0]
  positions = np.arange(num_features)
  width = 0.4
  for index, ax in enumerate(axes):
    ax.bar(positions - width / 2, true[index], width, label="true")
    ax.bar(
      positions + width / 2, reconstructed[index], width, label="reconstructed"
    )
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.set_ylabel(f"record {index}\n(standardized)")
    ax.set_xticks(positions)
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
  axes[0].legend(loc="upper right")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def plot_roc_curves(
  curves: Mapping[str, Mapping[str, Sequence[float] | float]],
  path: str,
  title: str = "Loss-threshold membership inference",
) -> None:
  """Draws membership-inference ROC curves, one per setting.

  Args:
    curves: Setting label to a dict with "fpr" and "tpr" lists and an
      optional "auc", as returned by `membership_inference_auc`.
    path: Output PNG path.
    title: Figure title.
  """
  fig = Figure(figsize=(5.5, 5.0))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for label, curve in curves.items():
    if "auc" in curve:
      label = f"{label} (AUC {float(curve['auc']):.3f})"
    ax.plot(curve["fpr"], curve["tpr"], label=label)
  ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
  ax.set_xlim(0.0, 1.0)
  ax.set_ylim(0.0, 1.0)
  ax.set_xlabel("false positive rate (non-members flagged)")
  ax.set_ylabel("true positive rate (members flagged)")
  ax.set_title(title)
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
