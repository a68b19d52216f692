"""The toy recolouring benchmark's figures (`vidjax.eval.toy_edit`) through the one metric interface.

`case_features(output, case)` turns an edited toy clip into per-item scalars, the unit the evaluation
job caches; the metrics below reduce them as `toy_edit.evaluate` does (IoU and consistency averaged
over items, colour accuracy over all objects of all items).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from vidjax.eval import toy_edit
from vidjax.eval.metrics import FeatureSet, Metric, PerItemMetric

_PROTOCOL = "held-out toy scenes (seeds from 1000000), the prompt's new colours, the source clip's depth"


def case_features(output: np.ndarray, case: toy_edit.EditCase) -> dict[str, np.ndarray]:
  """uint8 (T, H, W, 3) edit of `case` -> float64 scalars toy_iou, toy_colours_correct, toy_objects, toy_consistency."""
  correct = toy_edit.colour_accuracy(output, case)
  return {"toy_iou": np.float64(toy_edit.silhouette_iou(output, case)),
          "toy_colours_correct": np.float64(correct.sum()), "toy_objects": np.float64(len(correct)),
          "toy_consistency": np.float64(toy_edit.frame_consistency(output, case))}


@dataclasses.dataclass(frozen=True)
class ToyIoU(PerItemMetric):
  """Silhouette IoU (`toy_edit.silhouette_iou`: 1-NN colour segmentation vs source masks), mean over items."""

  name: ClassVar[str] = "toy_silhouette_iou"
  needs: ClassVar[tuple[str, ...]] = ("toy_iou",)
  protocol: ClassVar[str] = "silhouette IoU, " + _PROTOCOL

  def per_item(self, generated: FeatureSet, reference: FeatureSet | None = None) -> np.ndarray:
    return np.asarray(generated["toy_iou"], np.float64)


@dataclasses.dataclass(frozen=True)
class ToyColourAccuracy(Metric):
  """The fraction of all objects (over all items) whose output colour is the prompt's (`toy_edit.colour_accuracy`)."""

  name: ClassVar[str] = "toy_colour_accuracy"
  needs: ClassVar[tuple[str, ...]] = ("toy_colours_correct", "toy_objects")
  protocol: ClassVar[str] = "objects taking the prompt's colour / objects, " + _PROTOCOL

  def value(self, generated: FeatureSet, reference: FeatureSet | None) -> float:
    return float(np.sum(generated["toy_colours_correct"]) / np.sum(generated["toy_objects"]))


@dataclasses.dataclass(frozen=True)
class ToyConsistency(PerItemMetric):
  """Frame-to-frame change of the output over the target render's (`toy_edit.frame_consistency`; 1 = ideal)."""

  name: ClassVar[str] = "toy_frame_consistency"
  needs: ClassVar[tuple[str, ...]] = ("toy_consistency",)
  protocol: ClassVar[str] = "mean |frame change| / the target render's, " + _PROTOCOL

  def per_item(self, generated: FeatureSet, reference: FeatureSet | None = None) -> np.ndarray:
    return np.asarray(generated["toy_consistency"], np.float64)


METRICS = (ToyIoU(), ToyColourAccuracy(), ToyConsistency())
