"""Depth estimators for the shard builder: a small registry behind one protocol.

  estimator = make_depth_estimator("folder", depth_dir="/data/depth")
  depth = estimator(clip)  # float32 (T, H, W) in [0, 1], 1 = near

An estimator takes the whole `SourceClip` rather than only its frames because two of them need
more than pixels: `toy` reads the toy world's ground truth and `folder` looks the clip's key up.

  toy     the toy world's ground-truth disparity (only with --source toy).
  folder  precomputed maps, one `<depth_dir>/<key>.npy` per clip: float (T, H, W) inverse depth
          (disparity, e.g. raw MiDaS output) of exactly the clip's frames after resize and crop;
          any scale, normalised per clip to [0, 1]. One .npy per clip, not per-frame PNGs, keeps
          float precision and needs one file open per clip.
  dpt     the JAX DPT/MiDaS model of `vidjax.models.depth` with local weights (`depth_weights`),
          loaded by the caller's `load_model(weights) -> f(frames uint8 (T, H, W, 3)) -> float32
          (T, H, W) relative inverse depth` (`vidjax.convert.hf_dpt.load_depth_estimator`'s
          `inverse_depth`, so that a batch of several clips' frames is normalised per clip).
"""

from __future__ import annotations

import os
from typing import Callable, Protocol

import numpy as np

from vidjax.data.sources import SourceClip
from vidjax.errors import InputError


class DepthEstimator(Protocol):

  def __call__(self, clip: SourceClip) -> np.ndarray:
    """Returns float32 (T, H, W) inverse depth in [0, 1] (1 = near) for the clip's frames."""


def normalise_per_clip(inverse_depth: np.ndarray) -> np.ndarray:
  """Min-max over the whole clip to [0, 1] (not per frame, so it does not flicker); flat -> 0."""
  inverse_depth = np.asarray(inverse_depth, np.float32)
  low, high = float(inverse_depth.min()), float(inverse_depth.max())
  if not high > low:
    return np.zeros_like(inverse_depth)
  return (inverse_depth - low) / (high - low)


def _toy_depth(clip: SourceClip) -> np.ndarray:
  if clip.depth is None:
    raise InputError(clip.key, "depth method 'toy' needs the toy world's ground truth",
                     "use --depth toy only with --source toy")
  return np.asarray(clip.depth, np.float32)


class FolderDepth:
  """Precomputed `<depth_dir>/<key>.npy` maps (see the module docstring)."""

  def __init__(self, depth_dir: str):
    self.depth_dir = depth_dir

  def __call__(self, clip: SourceClip) -> np.ndarray:
    path = os.path.join(self.depth_dir, clip.key + ".npy")
    expected = clip.frames.shape[:3]
    if not os.path.isfile(path):
      raise InputError(path, "no precomputed depth for this clip",
                       f"write {clip.key}.npy, float {expected}, into --depth_dir")
    try:
      depth = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
      raise InputError(path, f"unreadable .npy ({e})", "rewrite it with numpy.save") from e
    if depth.shape != expected or not np.all(np.isfinite(depth)):
      raise InputError(path, f"depth of shape {depth.shape} (finite: "
                       f"{bool(np.all(np.isfinite(depth)))}) for a clip of {expected}",
                       "store finite depth of the clip's frames after resize and crop")
    return normalise_per_clip(depth)


class ModelDepth:
  """Wraps a model `f(frames) -> relative inverse depth` and normalises its output per clip."""

  def __init__(self, model: Callable[[np.ndarray], np.ndarray]):
    self.model = model

  def __call__(self, clip: SourceClip) -> np.ndarray:
    return normalise_per_clip(self.model(clip.frames))


def estimate_batch(estimator: DepthEstimator, clips: list[SourceClip]) -> list[np.ndarray | InputError]:
  """Depth for a batch of clips of one size: a model runs once on all their frames (T1 + T2 + ..., H, W, 3).

  An item whose depth is missing gives its InputError in its place, so one bad clip skips only itself.
  The model returns raw per-frame inverse depth and each clip is normalised on its own afterwards,
  so a clip's map does not depend on the other clips of its batch (beyond XLA's float rounding).
  """
  if isinstance(estimator, ModelDepth) and clips:
    raw = estimator.model(np.concatenate([clip.frames for clip in clips]))
    ends = np.cumsum([len(clip.frames) for clip in clips])
    return [normalise_per_clip(d) for d in np.split(raw, ends[:-1])]
  out = []
  for clip in clips:
    try:
      out.append(estimator(clip))
    except InputError as e:
      out.append(e)
  return out


DEPTH_METHODS = ("toy", "folder", "dpt")


def check_depth_method(method: str, *, depth_dir: str | None = None,
                       depth_weights: str | None = None) -> None:
  """Raises InputError naming what the method lacks, without loading anything."""
  if method not in DEPTH_METHODS:
    raise InputError(f"--depth {method}", "unknown depth method", f"use one of {DEPTH_METHODS}")
  if method == "folder" and not (depth_dir and os.path.isdir(depth_dir)):
    raise InputError(f"--depth_dir {depth_dir or '(not given)'}",
                     "depth method 'folder' needs a folder of <key>.npy maps",
                     "pass --depth_dir pointing at an existing folder")
  if method == "dpt" and not (depth_weights and os.path.exists(depth_weights)):
    raise InputError(f"--depth_weights {depth_weights or '(not given)'}",
                     "depth method 'dpt' needs local DPT/MiDaS weights",
                     "pass --depth_weights /path/to/dpt_weights (nothing is downloaded)")


def make_depth_estimator(method: str, *, depth_dir: str | None = None, depth_weights: str | None = None,
                         load_model: Callable[[str], Callable[[np.ndarray], np.ndarray]] | None = None
                         ) -> DepthEstimator:
  """Builds the named estimator; 'dpt' loads its weights here with `load_model(depth_weights)`.

  The model loader is passed in because models sit above this layer: the shard job
  (`data_pipelines.build_shards`) passes `vidjax.convert.hf_dpt.load_depth_estimator`.
  """
  check_depth_method(method, depth_dir=depth_dir, depth_weights=depth_weights)
  if method == "toy":
    return _toy_depth
  if method == "folder":
    return FolderDepth(depth_dir)
  if load_model is None:
    raise InputError("--depth dpt", "no DPT model loader was given to the shard builder",
                     "run `vidjax build-shards` (data_pipelines.build_shards), which loads DPT weights")
  return ModelDepth(load_model(depth_weights))
