"""Reading and checking the edit pipeline's inputs: video, depth, mask and content image.

Every reader raises `InputError` naming the input, the problem and the fix before any model runs,
and returns plain numpy arrays:
  video  uint8 (T, H, W, 3)     a path PyAV opens (grayscale and palette videos become RGB) or an array
  depth  float32 (T, H, W)      in [0, 1], 1 = near (MiDaS' inverse-depth convention): an array,
                                a .npy file, or a video (a depth render from 3D software or a phone,
                                read as luminance, white = near)
  mask   bool (T or 1, H, W)    True where the source is KEPT: an array, an image or a video file
  image  uint8 (H, W, 3)        the content image (Gen-1 image prompting): an array or an image file
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from vidjax import interpolate
from vidjax.data import video_io
from vidjax.errors import InputError

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def existing_file(path: str, name: str) -> str:
  if not os.path.exists(path):
    raise InputError(path, f"the {name} file does not exist", f"check the path of the {name}")
  if os.path.isdir(path):
    raise InputError(path, f"is a folder, not a {name} file", f"pass a {name} file")
  if os.path.getsize(path) == 0:
    raise InputError(path, f"the {name} file is empty (0 bytes)", f"pass a complete {name} file")
  return path


def read_video_input(video: Any, *, num_frames: int | None, stride: int, start_sec: float) -> np.ndarray:
  """A path or array -> uint8 (T, H, W, 3); `num_frames` None keeps every selected frame."""
  if isinstance(video, (str, os.PathLike)):
    path = existing_file(os.fspath(video), "video")
    return video_io.read_video(path, num_frames=num_frames, stride=stride, start_sec=start_sec)
  frames = np.asarray(video)
  if frames.ndim == 3:  # (T, H, W) grayscale
    frames = np.repeat(frames[..., None], 3, axis=-1)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not frames.shape[0]:
    raise InputError(f"video array {frames.dtype} {frames.shape}", "is not uint8 frames (T, H, W, 3) with T >= 1",
                     "pass decoded RGB frames, or a video file path")
  frames = frames[::stride]
  if num_frames is not None:
    if len(frames) < num_frames:
      raise InputError("video array", f"has {len(frames)} frames at stride {stride}, fewer than the "
                       f"{num_frames} asked for", "ask for fewer frames or a smaller stride")
    frames = frames[:num_frames]
  return frames


def read_depth_input(depth: Any, *, num_frames: int | None, stride: int, start_sec: float) -> np.ndarray:
  """An array, .npy or video -> float32 (T, H, W) in [0, 1] (min-max over the clip), 1 = near."""
  name = "depth"
  if isinstance(depth, (str, os.PathLike)):
    path = existing_file(os.fspath(depth), "depth")
    name = path
    if path.lower().endswith(".npy"):
      try:
        depth = np.load(path, allow_pickle=False)
      except (OSError, ValueError) as e:
        raise InputError(path, f"not a readable .npy array ({e})", "save the depth with numpy.save") from e
    else:
      frames = video_io.read_video(path, num_frames=num_frames, stride=stride, start_sec=start_sec)
      depth = frames.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
      num_frames, stride = None, 1  # already selected
  depth = np.asarray(depth)
  if depth.ndim == 4 and depth.shape[-1] == 1:
    depth = depth[..., 0]
  if depth.ndim == 2:
    depth = depth[None]
  if depth.ndim != 3 or not depth.size or not np.issubdtype(depth.dtype, np.number):
    raise InputError(f"{name} {depth.dtype} {depth.shape}", "is not a depth sequence (T, H, W) with T >= 1",
                     "pass inverse depth (near = large) as a (T, H, W) array, .npy file or grayscale video")
  depth = depth.astype(np.float32)[::stride]
  if num_frames is not None:
    if len(depth) < num_frames:
      raise InputError(name, f"has {len(depth)} depth frames at stride {stride}, fewer than the {num_frames} "
                       "asked for", "ask for fewer frames or a smaller stride")
    depth = depth[:num_frames]
  if not np.isfinite(depth).all():
    raise InputError(name, "holds NaN or infinite values", "fill the holes of the depth maps first")
  low, high = float(depth.min()), float(depth.max())
  return (depth - low) / (high - low) if high > low else np.zeros_like(depth)


def read_mask_input(mask: Any, *, num_frames: int, size: tuple[int, int]) -> np.ndarray:
  """A (H, W) / (T, H, W) array, image or video -> bool (T or 1, H, W), True = keep the source.

  `size` is the (H, W) of the input frames the mask must match, before any resizing.
  """
  name = "mask"
  if isinstance(mask, (str, os.PathLike)):
    path = existing_file(os.fspath(mask), "mask")
    name = path
    if path.lower().endswith(_IMAGE_SUFFIXES):
      mask = _read_image(path, "mask").mean(axis=-1)
    else:
      mask = video_io.read_video(path, max_frames=num_frames).mean(axis=-1)
    mask = mask > 127.5
  mask = np.asarray(mask)
  if mask.ndim == 2:
    mask = mask[None]
  if mask.ndim != 3 or mask.shape[1:] != tuple(size) or mask.shape[0] not in (1, num_frames):
    raise InputError(f"{name} of shape {mask.shape}", f"does not fit the video's {num_frames} frames of "
                     f"{size[1]}x{size[0]} (width x height)",
                     f"give a mask of shape ({size[0]}, {size[1]}) or ({num_frames}, {size[0]}, {size[1]}), "
                     "True (or white) where the source is kept")
  return mask.astype(bool) if mask.dtype == bool else mask > 0.5


def _read_image(path: str, name: str) -> np.ndarray:
  from PIL import Image, UnidentifiedImageError

  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except (UnidentifiedImageError, OSError) as e:
    raise InputError(path, f"not a readable image ({e})", f"pass the {name} as a PNG or JPEG file") from e


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_image_inputs(image: Any) -> list[np.ndarray]:
  """The content image(s) -> a list of uint8 (H, W, 3), sizes free.

  `image`: a path, a folder (its image files, sorted by name: a customization set), an array
  (H, W, 3) or (N, H, W, 3), or a list of those. Several images are one content: the
  pipeline averages their CLIP embeddings, as Gen-1 conditions on a set of images of one subject.
  """
  if isinstance(image, (str, os.PathLike)) and os.path.isdir(image):
    files = sorted(f for f in os.listdir(image) if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
      raise InputError(os.fspath(image), f"is a folder without image files ({', '.join(IMAGE_SUFFIXES)})",
                       "pass an image file, or a folder of PNG or JPEG images")
    return [read_image_input(os.path.join(image, f)) for f in files]
  if isinstance(image, (list, tuple)):
    if not image:
      raise InputError("image", "is an empty list", "pass at least one content image")
    return [array for item in image for array in read_image_inputs(item)]
  if not isinstance(image, (str, os.PathLike)) and np.ndim(image) == 4:
    return [read_image_input(item) for item in np.asarray(image)]
  return [read_image_input(image)]


def read_image_input(image: Any) -> np.ndarray:
  """A path or array -> uint8 (H, W, 3)."""
  if isinstance(image, (str, os.PathLike)):
    return _read_image(existing_file(os.fspath(image), "image"), "content image")
  array = np.asarray(image)
  if array.ndim == 2:
    array = np.repeat(array[..., None], 3, axis=-1)
  if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
    raise InputError(f"content image {array.dtype} {array.shape}", "is not a uint8 RGB image (H, W, 3)",
                     "pass an image file or a uint8 array")
  return array


def scaled_size(source_hw: tuple[int, int], target_hw: tuple[int, int], max_side: int | None) -> tuple[int, int]:
  """The size frames are scaled to before their centre crop to `target_hw`.

  `video_io.fit_to_multiple` scales by max_side / long side (never up) and crops; an explicit
  size (`resize_center_crop`) scales to cover the target and crops. Knowing it, depth maps and
  masks take exactly the frames' geometry (`fit_maps`).
  """
  (sh, sw), (th, tw) = source_hw, target_hw
  if max_side is not None:  # fit_to_multiple
    scale = min(1.0, max_side / max(sh, sw))
    return (sh, sw) if scale == 1.0 else (max(1, round(sh * scale)), max(1, round(sw * scale)))
  scale = max(th / sh, tw / sw)
  return max(th, round(sh * scale)), max(tw, round(sw * scale))


def fit_maps(values: np.ndarray, scaled_hw: tuple[int, int], target_hw: tuple[int, int]) -> np.ndarray:
  """(T, H, W) maps -> float32 (T, *target_hw): linear resize to `scaled_hw`, then the centre crop."""
  out = interpolate.resize(values.astype(np.float32), scaled_hw, axes=(-2, -1))
  (sh, sw), (th, tw) = scaled_hw, target_hw
  top, left = (sh - th) // 2, (sw - tw) // 2
  return out[..., top:top + th, left:left + tw]
