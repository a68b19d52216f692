"""`render_clip`: a toy video with ground-truth depth, disparity, masks and caption."""

from __future__ import annotations

import dataclasses

import numpy as np

from vidjax.errors import InputError
from vidjax.toyworld import captions
from vidjax.toyworld import render
from vidjax.toyworld import scene as scene_lib


@dataclasses.dataclass(frozen=True, eq=False)
class ToyClip:
  """One rendered toy clip (T frames of H x W pixels, K objects).

  Attributes:
    rgb: uint8 (T, H, W, 3).
    depth: float32 (T, H, W), metric distance along the camera axis; the sky is `render.FAR`.
    disparity: float32 (T, H, W) in [0, 1], MiDaS-style: 1 / depth min-max normalised over the
      whole clip (not per frame, so it does not flicker), 1 = nearest, 0 = farthest (the sky).
    masks: bool (T, K, H, W), the visible pixels of each object (occluded parts are False).
    caption: the grammar's caption of the scene (see `captions`).
    objects: one {"shape", "colour"} dict per object, in mask order.
    floor: floor texture name; time_of_day: sky name; seed: the scene's seed.
  """

  rgb: np.ndarray
  depth: np.ndarray
  disparity: np.ndarray
  masks: np.ndarray
  caption: str
  objects: tuple[dict[str, str], ...]
  floor: str
  time_of_day: str
  seed: int


def render_clip(seed: int, num_frames: int = 8, height: int = 64, width: int = 64,
                stride: int = 1, scene: scene_lib.Scene | None = None) -> ToyClip:
  """Renders time steps 0, stride, ..., (num_frames - 1) * stride of a toy scene.

  Args:
    seed: draws the scene with `sample_scene(seed)`; the same seed gives identical arrays.
    num_frames, height, width: output size T, H, W.
    stride: time steps between frames, like reading a video at a frame stride.
    scene: render this description instead (e.g. `recolour(sample_scene(seed), ...)`); the
      clip's `seed` is then `scene.seed`.
  """
  for name, value in (("num_frames", num_frames), ("height", height), ("width", width),
                      ("stride", stride)):
    if int(value) != value or value < 1:
      raise InputError(name, f"must be a positive integer, got {value!r}", f"pass {name} >= 1")
  scene = scene_lib.sample_scene(seed) if scene is None else scene
  scene_lib.check_scene(scene)
  steps = np.arange(num_frames) * stride
  frames = render.render_scene(scene, steps, height, width)
  object_ids = np.arange(1, len(scene.objects) + 1, dtype=np.int8)
  masks = frames.surface[:, None, :, :] == object_ids[None, :, None, None]
  return ToyClip(
      rgb=frames.rgb,
      depth=frames.depth,
      disparity=normalised_disparity(frames.depth),
      masks=masks,
      caption=captions.caption_for(scene),
      objects=tuple({"shape": o.shape, "colour": o.colour} for o in scene.objects),
      floor=scene.floor,
      time_of_day=scene.time_of_day,
      seed=scene.seed,
  )


def normalised_disparity(depth: np.ndarray) -> np.ndarray:
  """MiDaS-style relative inverse depth of a clip: float32 in [0, 1], 1 = nearest.

  Min-max over the whole clip; a clip of constant depth gives all zeros.
  """
  inverse = 1.0 / depth
  low, high = inverse.min(), inverse.max()
  if high <= low:
    return np.zeros_like(depth, dtype=np.float32)
  return ((inverse - low) / (high - low)).astype(np.float32)
