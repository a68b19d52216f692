"""One PNG per fidelity claim (`vidjax.pipelines.fidelity`'s records), with error bars over scenes.

  plot_claim(record, "out/temporal_guidance.png")

A swept number (omega_t, t_s) is drawn as lines over it, one panel per metric; named variants (image
vs video model, window vs full attention) as bars; the long-clip claim adds its IoU per segment.
"""

from __future__ import annotations

import os
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI

from matplotlib import pyplot as plt  # noqa: E402  (after the backend)

from vidjax.errors import atomic_path  # noqa: E402

TITLES = {"iou": "silhouette IoU (higher: follows the depth)",
          "colour_accuracy": "colour accuracy (in the silhouettes)",
          "colour_presence": "colour presence (anywhere: follows the prompt)",
          "consistency": "frame change / the ideal's (1 = ideal, higher = flicker)"}
PAPERS = {"temporal_guidance": "Gen-1 Fig. 4: temporal guidance", "structure_fidelity": "Gen-1 Fig. 6/10: t_s",
          "temporal_window": "Make-Your-Video Fig. 6: long clips", "temporal_layers": "Make-Your-Video Table 3"}


def plot_claim(record: dict[str, Any], path: str | os.PathLike) -> None:
  """Writes `record`'s plot to `path` (PNG, written whole or not at all)."""
  points = record["points"]
  metrics = list(points[0]["metrics"])
  segments = [p for p in points if "segment_iou" in p]
  panels = len(metrics) + (1 if segments else 0)
  figure, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.6), squeeze=False)
  axes = list(axes[0])
  if segments:
    _plot_segments(axes.pop(0), segments)
  numeric = all(p["x"] is not None for p in points)
  for ax, name in zip(axes, metrics):
    means = [p["metrics"][name]["mean"] for p in points]
    errors = [p["metrics"][name]["error"] for p in points]
    if numeric:
      ax.errorbar([p["x"] for p in points], means, yerr=errors, marker="o", capsize=3)
      ax.set_xlabel(record["x"])
    else:
      ax.bar(range(len(points)), means, yerr=errors, capsize=4, color="tab:blue", alpha=0.8)
      ax.set_xticks(range(len(points)), [p["label"] for p in points], rotation=15, ha="right", fontsize=8)
    if name == "consistency":
      ax.set_yscale("log")
      ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_title(TITLES.get(name, name), fontsize=9)
    ax.grid(alpha=0.3)
  settings = record["settings"]
  figure.suptitle(f"{PAPERS.get(record['claim'], record['claim'])}: {len(settings['seeds'])} held-out toy scenes, "
                  f"error bars {settings['z']:g} standard errors\nexpected: {record['expected']}", fontsize=9)
  figure.tight_layout()
  with atomic_path(path) as tmp:
    figure.savefig(tmp, format="png", dpi=110)
  plt.close(figure)


def _plot_segments(ax, points: list[dict[str, Any]]) -> None:
  """IoU per trained-length segment of each variant (the reference has one segment)."""
  for point in points:
    stats = point["segment_iou"]
    xs = list(range(1, len(stats) + 1))
    ax.errorbar(xs, [s["mean"] for s in stats], yerr=[s["error"] for s in stats], marker="o", capsize=3,
                label=point["label"])
  ax.set_xticks(range(1, max(len(p["segment_iou"]) for p in points) + 1))
  ax.set_xlabel("segment of the clip (trained length each)")
  ax.set_title("silhouette IoU per segment", fontsize=9)
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
