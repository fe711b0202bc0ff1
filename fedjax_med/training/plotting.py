"""PNG plots of per-site metrics over rounds."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_client_metrics(
  records: Sequence[dict],
  metric: str,
  path: str,
  client_names: Sequence[str],
) -> None:
  """Plots `eval/<site>/<metric>` for each site and pooled over rounds.

  Args:
    records: Rows of `metrics.jsonl`, as returned by `read_jsonl`.
    metric: Metric name, e.g. "accuracy".
    path: Output PNG path.
    client_names: Sites to draw, in legend order.
  """
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, style in [(n, "-") for n in client_names] + [("pooled", "k--")]:
    key = f"eval/{name}/{metric}"
    points = [
      (r["round"], r[key])
      for r in records
      if r.get(key) is not None and not math.isnan(r[key])
    ]
    if points:
      rounds, values = zip(*points, strict=True)
      ax.plot(rounds, values, style, marker="o", markersize=3, label=name)
  ax.set_xlabel("round")
  ax.set_ylabel(metric)
  ax.set_title(f"Test {metric} per site")
  ax.grid(alpha=0.3)
  ax.legend(loc="best", fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
