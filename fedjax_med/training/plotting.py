"""PNG plots of per-site metrics over rounds.

Figures are drawn on matplotlib's Agg canvas through `matplotlib.figure.Figure`
rather than pyplot, so plotting needs no display and leaves the caller's
pyplot backend and open figures alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from absl import logging
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _series(records: Sequence[dict], key: str) -> tuple[list, list]:
  """Returns the rounds and values of `key`, sorted by round.

  Records without `key` are skipped. A null or infinite value becomes NaN,
  which leaves a gap in the line. A round written twice, as after a resumed
  run, keeps its last value.
  """
  by_round = {}
  for record in records:
    if key not in record:
      continue
    value = record[key]
    finite = value is not None and math.isfinite(value)
    by_round[record["round"]] = value if finite else math.nan
  rounds = sorted(by_round)
  return rounds, [by_round[r] for r in rounds]


def plot_client_metrics(
  records: Sequence[dict],
  metric: str,
  path: str,
  client_names: Sequence[str],
) -> None:
  """Plots `eval/<site>/<metric>` for each site, and pooled, over rounds.

  Args:
    records: Records of `metrics.jsonl`, as returned by `read_jsonl`, each
      with a "round" key.
    metric: Metric name, e.g. "accuracy".
    path: Output PNG path.
    client_names: Sites to draw, in legend order. The pooled curve
      `eval/pooled/<metric>` is drawn last as a dashed black line.

  A metric with no finite value for any site (AUROC at single-class sites)
  still produces a PNG, with a note on empty axes and a logged warning.
  """
  fig = Figure(figsize=(7, 4.5))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()

  curves = [(name, {}) for name in client_names]
  curves.append(("pooled", {"color": "black", "linestyle": "--"}))
  num_drawn = 0
  for name, style in curves:
    rounds, values = _series(records, f"eval/{name}/{metric}")
    if any(math.isfinite(v) for v in values):
      ax.plot(rounds, values, marker="o", markersize=3, label=name, **style)
      num_drawn += 1

  ax.set_xlabel("round")
  ax.set_ylabel(metric)
  ax.set_title(f"Test {metric} per site")
  ax.grid(alpha=0.3)
  if num_drawn:
    ax.legend(loc="best", fontsize="small")
  else:
    logging.warning(
      "No finite eval/<site>/%s value in %d records; %s has empty axes.",
      metric,
      len(records),
      path,
    )
    ax.text(
      0.5,
      0.5,
      f"no finite {metric} values",
      ha="center",
      va="center",
      transform=ax.transAxes,
    )
  fig.tight_layout()
  fig.savefig(path, dpi=120)
