"""Video IO with PyAV: read what FFmpeg opens, write mp4 and gif atomically, side-by-side grids.

Frames are uint8 (T, H, W, 3) RGB. Grayscale and palette videos come back as RGB. Every user-facing
failure (missing, empty, not a video, truncated, too short) is an `InputError` naming the file.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Sequence

import av
import numpy as np
from PIL import Image, ImageDraw

from vidjax.errors import InputError, atomic_path

_DECODE_ERRORS = (av.FFmpegError, ValueError, OSError, IndexError)


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  num_frames: int | None  # from the container header; None when it does not say
  fps: float | None
  width: int
  height: int
  duration_sec: float | None
  codec: str


def _open(path: str | os.PathLike) -> av.container.InputContainer:
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise InputError(path, "file not found", "check the path")
  if os.path.getsize(path) == 0:
    raise InputError(path, "the file is empty (0 bytes)", "re-copy or re-download the video")
  try:
    container = av.open(path)
  except _DECODE_ERRORS as e:
    raise InputError(path, f"not a readable video ({e})", "pass a video file FFmpeg can open (mp4, avi, webm, gif, ...)") from e
  if not container.streams.video:
    container.close()
    raise InputError(path, "has no video stream", "pass a video file, not audio or another file type")
  return container


def probe(path: str | os.PathLike) -> VideoInfo:
  """Header facts of the first video stream."""
  with _open(path) as container:
    stream = container.streams.video[0]
    duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
    return VideoInfo(num_frames=stream.frames or None, fps=float(stream.average_rate) if stream.average_rate else None,
                     width=stream.codec_context.width, height=stream.codec_context.height, duration_sec=duration,
                     codec=stream.codec_context.name)


def _decoded_frames(path: str, container) -> Iterator[tuple[float | None, av.VideoFrame]]:
  try:
    for frame in container.decode(video=0):
      yield frame.time, frame
  except _DECODE_ERRORS as e:
    raise InputError(path, f"decoding failed: truncated or corrupt ({e})", "re-encode or re-download the video") from e


def read_video(path: str | os.PathLike, *, num_frames: int | None = None, stride: int = 1, fps: float | None = None,
               start_sec: float = 0.0, max_frames: int | None = None) -> np.ndarray:
  """Decodes frames selected by timestamp: from `start_sec`, every `stride`-th frame, or resampled to `fps`.

  Args:
    path: any video PyAV opens.
    num_frames: exactly this many frames; fewer available is an InputError.
    stride: keep every stride-th decoded frame (ignored when `fps` is given).
    fps: sample at this rate instead: for each target time start_sec + k / fps, the first frame at or after it.
    start_sec: skip frames before this time.
    max_frames: at most this many frames (fewer is fine).
  Returns:
    uint8 (T, H, W, 3).
  """
  path = os.fspath(path)
  if stride < 1 or (fps is not None and fps <= 0):
    raise InputError("frame selection", f"stride {stride} / fps {fps}", "use stride >= 1 and fps > 0")
  limit = min(n for n in (num_frames, max_frames, None) if n is not None) if (num_frames or max_frames) else None
  frames, index, next_time = [], 0, start_sec
  with _open(path) as container:
    for time, frame in _decoded_frames(path, container):
      if time is not None and time < start_sec - 1e-6:
        continue
      if fps is not None:
        if time is not None and time + 1e-6 < next_time:
          continue
        next_time += 1.0 / fps
      elif index % stride:
        index += 1
        continue
      index += 1
      frames.append(frame.to_ndarray(format="rgb24"))
      if limit is not None and len(frames) >= limit:
        break
  if not frames:
    raise InputError(path, "no frames could be decoded", "pass a video with at least one frame")
  if num_frames is not None and len(frames) < num_frames:
    raise InputError(path, f"only {len(frames)} frames at this selection, {num_frames} requested",
                     "pass a longer video, or lower the frame count or stride")
  return np.stack(frames)


def resize_center_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  """Resizes (antialiased bicubic) so the frames cover height x width, then centre-crops: uint8 (T, height, width, 3)."""
  t, h, w, _ = frames.shape
  scale = max(height / h, width / w)
  new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
  top, left = (new_h - height) // 2, (new_w - width) // 2
  out = np.empty((t, height, width, 3), np.uint8)
  for i, frame in enumerate(frames):
    resized = Image.fromarray(frame).resize((new_w, new_h), Image.Resampling.BICUBIC) if (new_h, new_w) != (h, w) \
        else Image.fromarray(frame)
    out[i] = np.asarray(resized)[top:top + height, left:left + width]
  return out


def fit_to_multiple(frames: np.ndarray, multiple: int = 64, max_side: int | None = None) -> tuple[np.ndarray, bool]:
  """The largest centre crop whose sides are multiples of `multiple` (after shrinking to `max_side`).

  Returns:
    (frames uint8 (T, H', W', 3), whether the size changed: callers warn about it).
  """
  t, h, w, _ = frames.shape
  scale = min(1.0, max_side / max(h, w)) if max_side else 1.0
  target_h, target_w = (int(h * scale) // multiple) * multiple, (int(w * scale) // multiple) * multiple
  if target_h < multiple or target_w < multiple:
    raise InputError(f"{w}x{h} frames", f"too small for the model's size multiple {multiple}",
                     f"use frames of at least {multiple}x{multiple}")
  if (target_h, target_w) == (h, w):
    return frames, False
  return resize_center_crop(frames, target_h, target_w), True


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 8) -> str:
  """Writes uint8 (T, H, W, 3) to .mp4 (h264) or .gif, atomically: the path appears only when complete."""
  path = os.fspath(path)
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
    raise InputError("frames", f"shape {frames.shape} dtype {frames.dtype}", "pass uint8 (T, H, W, 3) with T >= 1")
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in (".mp4", ".gif"):
    raise InputError(path, f"unsupported output type {suffix!r}", "write .mp4 or .gif")
  with atomic_path(path) as tmp:
    if suffix == ".gif":
      images = [Image.fromarray(f) for f in frames]
      images[0].save(tmp, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    else:
      _write_mp4(tmp, frames, fps)
  return path


def _write_mp4(path: str, frames: np.ndarray, fps: int) -> None:
  # yuv420p needs even sides: pad by repeating the last row/column.
  t, h, w, _ = frames.shape
  frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
  with av.open(path, "w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=fps, options={"crf": "12", "preset": "medium"})
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())


def depth_to_rgb(depth: np.ndarray) -> np.ndarray:
  """Colour map for depth (T, H, W) in [0, 1] (1 = near): dark blue far -> yellow near, uint8 (T, H, W, 3)."""
  anchors = np.array([[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]], np.float32)
  d = np.clip(np.asarray(depth, np.float32), 0.0, 1.0) * (len(anchors) - 1)
  low = np.floor(d).astype(np.int32).clip(0, len(anchors) - 2)
  frac = (d - low)[..., None]
  return (anchors[low] * (1 - frac) + anchors[low + 1] * frac).round().astype(np.uint8)


def make_grid(videos: Sequence[np.ndarray], labels: Sequence[str], *, label_height: int = 14) -> np.ndarray:
  """Side-by-side videos with a text label above each: uint8 (T, label_height + H, sum W, 3).

  Videos are resized to the first one's height; shorter ones hold their last frame.
  """
  if len(videos) != len(labels) or not videos:
    raise InputError("make_grid", f"{len(videos)} videos and {len(labels)} labels", "pass one label per video")
  height, length = videos[0].shape[1], max(len(v) for v in videos)
  columns = []
  for video, label in zip(videos, labels):
    if video.shape[1] != height:
      video = resize_center_crop(video, height, round(video.shape[2] * height / video.shape[1]))
    video = np.concatenate([video, np.repeat(video[-1:], length - len(video), axis=0)]) if len(video) < length else video
    bar = Image.new("RGB", (video.shape[2], label_height), (0, 0, 0))
    ImageDraw.Draw(bar).text((2, 1), label, fill=(255, 255, 255))
    bar = np.broadcast_to(np.asarray(bar), (length, label_height, video.shape[2], 3))
    columns.append(np.concatenate([bar, video], axis=1))
  return np.concatenate(columns, axis=2)
