"""Video IO with PyAV: read what FFmpeg opens, write mp4 and gif atomically, side-by-side grids.

Frames are uint8 (T, H, W, 3) RGB everywhere; grayscale and palette videos come back as RGB. Every
failure a user can cause (missing, empty, not a video, truncated, too short) is an `InputError`
naming the file, the problem and the fix.

Frame times are presentation timestamps (pts * time_base) in seconds from the stream's start, in
display order. Some muxers write decode-order timestamps (e.g. an h264 mp4 whose B-frames carry
their decode times): the decoder still outputs frames in display order, so the k-th frame out gets
the k-th smallest timestamp seen (a bounded sort over the decoder's reorder window).
"""

from __future__ import annotations

import collections
import dataclasses
import fractions
import heapq
import itertools
import math
import os
from typing import Iterable, Iterator, Sequence

import av
import numpy as np
from PIL import Image, ImageDraw

from vidjax.errors import InputError, atomic_path

# Frames a decoder may hold back to reorder (h264 allows at most 16 reference frames).
_MAX_REORDER = 16
# h264 when this FFmpeg build has it (best quality per byte); mpeg4 is in every build.
_MP4_CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"
_TIME_TOLERANCE = 1e-6  # seconds; absorbs float error in pts * time_base
_FIX_BAD_FILE = "re-download or re-encode the video (e.g. ffmpeg -i in.mov -c:v libx264 out.mp4)"


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """Header facts of a video's first video stream.

  `num_frames` is what the container says (None if it does not): variable-rate files may count
  dropped frames that never decode. `fps` is the average rate, `duration_sec` the stream length.
  """

  path: str
  num_frames: int | None
  fps: float | None
  width: int
  height: int
  duration_sec: float | None
  codec: str


class _OpenVideo:
  """An opened container with its first video stream; closes the file on exit."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    _check_file(self.path)
    try:
      self.container = av.open(self.path)
    except av.FFmpegError as e:
      raise InputError(self.path, "cannot be opened as a video: not a video file, or truncated "
                       f"or corrupt ({e})", f"pass an mp4, avi, webm, mkv or gif; {_FIX_BAD_FILE}"
                      ) from e
    if not self.container.streams.video:
      self.container.close()
      raise InputError(self.path, "has no video stream", "pass a video file, not audio or an image")
    self.stream = self.container.streams.video[0]
    self.stream.thread_type = "AUTO"  # frame + slice threads: decoding is the cost of reading

  def __enter__(self) -> _OpenVideo:
    return self

  def __exit__(self, *exc_info) -> None:
    self.container.close()

  @property
  def fps(self) -> float | None:
    rate = self.stream.average_rate or self.stream.guessed_rate
    return float(rate) if rate else None

  @property
  def start_sec(self) -> float:
    start, time_base = self.stream.start_time, self.stream.time_base
    return float(start * time_base) if start is not None and time_base else 0.0


def _check_file(path: str) -> None:
  if not os.path.exists(path):
    raise InputError(path, "file not found", "check the path and that the copy is complete")
  if not os.path.isfile(path):
    raise InputError(path, "is not a file", "pass the path of a video file, not a folder")
  if os.path.getsize(path) == 0:
    raise InputError(path, "the file is empty (0 bytes)", _FIX_BAD_FILE)


def probe(path: str | os.PathLike) -> VideoInfo:
  """Reads the header only (no decoding) of the first video stream."""
  with _OpenVideo(path) as video:
    stream = video.stream
    duration = None
    if stream.duration and stream.time_base:
      duration = float(stream.duration * stream.time_base)
    elif video.container.duration:
      duration = video.container.duration / av.time_base
    return VideoInfo(path=video.path, num_frames=stream.frames or None, fps=video.fps,
                     width=stream.codec_context.width, height=stream.codec_context.height,
                     duration_sec=duration, codec=stream.codec_context.name)


def _timed_frames(video: _OpenVideo) -> Iterator[tuple[float, av.VideoFrame]]:
  """Yields (seconds from the stream's start, frame) in display order; see the module docstring."""
  pending, times = collections.deque(), []
  fallback_period = 1.0 / (video.fps or 1.0)  # for frames without a timestamp
  decoded = 0
  try:
    for packet in video.container.demux(video.stream):
      # A cut-off file can end in a partial packet that decodes without an error: the demuxer
      # flags it, and we stop instead of returning a silently shortened video.
      if packet.is_corrupt:
        raise InputError(video.path, f"is truncated or corrupt: a damaged packet after {decoded} "
                         "frames", _FIX_BAD_FILE)
      for frame in packet.decode():
        time = frame.time - video.start_sec if frame.time is not None else decoded * fallback_period
        heapq.heappush(times, time)
        pending.append(frame)
        decoded += 1
        if len(pending) > _MAX_REORDER:
          yield heapq.heappop(times), pending.popleft()
  except av.FFmpegError as e:
    raise InputError(video.path, f"is truncated or corrupt: decoding failed after {decoded} frames "
                     f"({e})", _FIX_BAD_FILE) from e
  while pending:
    yield heapq.heappop(times), pending.popleft()


def _frames_from(video: _OpenVideo, start_sec: float) -> Iterator[tuple[float, av.VideoFrame]]:
  """Like `_timed_frames`, but skips ahead by seeking to the last keyframe before `start_sec`.

  Containers without an index can land after the target: then it decodes from the beginning.
  """
  if start_sec > 0:
    target = int((start_sec + video.start_sec) / video.stream.time_base)
    try:
      video.container.seek(target, stream=video.stream, backward=True)
      timed = _timed_frames(video)
      first = next(timed, None)
      if first is not None and first[0] <= start_sec + _TIME_TOLERANCE:
        yield first
        yield from timed
        return
    except av.FFmpegError:
      pass  # not seekable: decode from the beginning
    video.container.seek(0, stream=video.stream)
  yield from _timed_frames(video)


def _shown_from(timed: Iterable[tuple[float, av.VideoFrame]], start_sec: float,
                last_frame_sec: float) -> Iterator[tuple[float, av.VideoFrame]]:
  """(time, frame) pairs from the frame on screen at `start_sec` (or the first one after it)."""
  previous = None
  for time, frame in timed:
    if time <= start_sec + _TIME_TOLERANCE:
      previous = (time, frame)
      continue
    if previous is not None:
      yield previous
      previous = None
    yield time, frame
  if previous is not None and start_sec < previous[0] + last_frame_sec:
    yield previous


def _resampled(shown: Iterable[tuple[float, av.VideoFrame]], start_sec: float, fps: float,
               last_frame_sec: float) -> Iterator[av.VideoFrame]:
  """For target times start_sec + k / fps, the frame on screen then (repeated or skipped)."""
  step = 0
  previous_time, previous = None, None
  for time, frame in shown:
    if previous is not None:
      # `previous` is on screen from its own time until this frame's.
      while start_sec + step / fps < time - _TIME_TOLERANCE:
        yield previous
        step += 1
    previous_time, previous = time, frame
  if previous is not None:
    while start_sec + step / fps < previous_time + last_frame_sec - _TIME_TOLERANCE:
      yield previous
      step += 1


def read_video(path: str | os.PathLike, *, num_frames: int | None = None, stride: int = 1,
               fps: float | None = None, start_sec: float = 0.0,
               max_frames: int | None = None) -> np.ndarray:
  """Decodes a selection of frames of any video PyAV opens.

  Args:
    path: the video file (mp4, avi, webm, mkv, gif, ...; h264, mpeg4, vp9, cinepak, ...).
    num_frames: exactly this many frames; a video too short for them is an InputError.
    stride: keep every stride-th frame shown from `start_sec` (with `fps` unset).
    fps: resample to this rate instead: for each time start_sec + k / fps, the frame on screen
      then, so frames repeat (upsampling) or are skipped (downsampling).
    start_sec: the first frame is the one on screen at this time (in seconds from the start).
    max_frames: at most this many frames (fewer is fine); no limit by default.

  Returns:
    uint8 (T, H, W, 3) RGB. Decoding stops as soon as the selection is complete.
  """
  _check_selection(num_frames, stride, fps, start_sec, max_frames)
  limit = min((n for n in (num_frames, max_frames) if n is not None), default=None)
  arrays, last_frame, last_array = [], None, None
  with _OpenVideo(path) as video:
    last_frame_sec = 1.0 / (video.fps or fps or 1.0)  # how long the last frame stays on screen
    shown = _shown_from(_frames_from(video, start_sec), start_sec, last_frame_sec)
    if fps is None:
      picked = itertools.islice((frame for _, frame in shown), 0, None, stride)
    else:
      picked = _resampled(shown, start_sec, fps, last_frame_sec)
    for frame in picked:
      if frame is not last_frame:  # resampling repeats frames: convert each once
        last_frame, last_array = frame, frame.to_ndarray(format="rgb24")
      arrays.append(last_array)
      if limit is not None and len(arrays) >= limit:
        break
  _check_frame_count(video.path, len(arrays), num_frames, stride, fps, start_sec)
  return np.stack(arrays)


def _check_selection(num_frames, stride, fps, start_sec, max_frames) -> None:
  for name, value in (("num_frames", num_frames), ("max_frames", max_frames)):
    if value is not None and (int(value) != value or value < 1):
      raise InputError(name, f"must be a positive integer, got {value!r}", f"pass {name} >= 1")
  if int(stride) != stride or stride < 1:
    raise InputError("stride", f"must be a positive integer, got {stride!r}", "pass stride >= 1")
  if fps is not None and not fps > 0:
    raise InputError("fps", f"must be positive, got {fps!r}", "pass fps > 0, or None for stride")
  if fps is not None and stride != 1:
    raise InputError("stride", f"stride {stride} with fps {fps}: both choose the frame times",
                     "pass either fps (resample) or stride (every n-th frame)")
  if not start_sec >= 0:
    raise InputError("start_sec", f"must be >= 0, got {start_sec!r}", "pass a start time >= 0")


def _check_frame_count(path, count, num_frames, stride, fps, start_sec) -> None:
  selection = f"from {start_sec:g} s " + (f"at {fps:g} fps" if fps else f"at stride {stride}")
  if count == 0:
    raise InputError(path, f"no frames decoded {selection}",
                     "check that the video is longer than start_sec, or re-encode it")
  if num_frames is not None and count < num_frames:
    raise InputError(path, f"too few frames: only {count} {selection}, {num_frames} requested",
                     "pass a longer video, or lower num_frames, stride or start_sec")


def _check_frames(frames: np.ndarray, name: str = "frames") -> np.ndarray:
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
    raise InputError(name, f"got shape {frames.shape} dtype {frames.dtype}",
                     "pass uint8 RGB frames of shape (T, H, W, 3) with T >= 1")
  return frames


def _cover_box(source_h: int, source_w: int, height: int, width: int) -> tuple[float, float, float, float]:
  """The centre crop, in source pixels (left, top, right, bottom), that scaling to cover height x width keeps."""
  scale = max(height / source_h, width / source_w)
  box_w, box_h = width / scale, height / scale
  left, top = (source_w - box_w) / 2, (source_h - box_h) / 2
  return left, top, left + box_w, top + box_h


def resize_center_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  """Scales frames to cover height x width (aspect kept), then centre-crops: uint8 (T, h, w, 3).

  One antialiased bicubic resample per frame (PIL): the crop box is given in source pixels, so
  nothing is resized that is then thrown away.
  """
  frames = _check_frames(frames)
  num, source_h, source_w, _ = frames.shape
  if (source_h, source_w) == (height, width):
    return frames
  box = _cover_box(source_h, source_w, height, width)
  out = np.empty((num, height, width, 3), np.uint8)
  for i, frame in enumerate(frames):
    out[i] = Image.fromarray(frame).resize((width, height), Image.Resampling.BICUBIC, box=box)
  return out


def resize_center_crop_maps(maps: np.ndarray, height: int, width: int) -> np.ndarray:
  """`resize_center_crop` for per-pixel maps: float (T, H, W) -> float32 (T, height, width).

  The same box and filter as the frames (PIL's float mode, not rounded to uint8), so depth and masks
  resized with frames of the same source size stay on their pixels. Bicubic overshoots near steps:
  callers clip depth to its range and threshold masks.
  """
  maps = np.asarray(maps, np.float32)
  num, source_h, source_w = maps.shape
  if (source_h, source_w) == (height, width):
    return maps
  box = _cover_box(source_h, source_w, height, width)
  out = np.empty((num, height, width), np.float32)
  for i, values in enumerate(maps):
    out[i] = Image.fromarray(values).resize((width, height), Image.Resampling.BICUBIC, box=box)
  return out


def _scaled_down(height: int, width: int, max_side: int | None) -> tuple[int, int]:
  """The (H, W) `fit_to_multiple` scales to: long side at most max_side, aspect kept, never up."""
  if not max_side or max(height, width) <= max_side:
    return height, width
  scale = max_side / max(height, width)
  return max(1, round(height * scale)), max(1, round(width * scale))


def check_fits_multiple(height: int, width: int, multiple: int, max_side: int | None = None, *,
                        name: str = "frames") -> None:
  """InputError unless frames of height x width, scaled down to `max_side`, hold a crop of `multiple`-sized sides.

  The message tells the two causes apart: frames too small in themselves, or a thin strip (e.g. 512x16) that
  `max_side` shrinks below the multiple; for the latter it names a max_side that fits.
  """
  if min(height, width) < multiple:
    raise InputError(name, f"{width}x{height} is too small for the model's size multiple {multiple}",
                     f"use frames of at least {multiple}x{multiple}")
  scaled_h, scaled_w = _scaled_down(height, width, max_side)
  if min(scaled_h, scaled_w) < multiple:
    long, short = max(height, width), min(height, width)
    needed = min(long, math.ceil(multiple * long / short))  # scale = needed / long keeps the short side >= multiple
    full = f"; {long} keeps the full size" if needed < long else ""
    raise InputError(name, f"{width}x{height} is scaled to {scaled_w}x{scaled_h} by max_side {max_side} (the long "
                     f"side's limit), leaving a side under the model's size multiple {multiple}",
                     f"raise max_side to at least {needed} (vidjax edit: --max-side {needed}{full}), or give an exact "
                     f"size (--height/--width, multiples of {multiple}) to scale to cover it and centre-crop")


def fit_to_multiple(frames: np.ndarray, multiple: int = 64,
                    max_side: int | None = None) -> tuple[np.ndarray, str | None]:
  """The largest centre crop whose sides are multiples of `multiple` (the model's size factor).

  Frames whose longer side exceeds `max_side` are first scaled down to it (aspect kept); the
  crop itself keeps pixels as they are (no resampling).
  Returns (frames uint8 (T, H', W', 3), a message saying how the size changed, for callers to
  warn with; None when the frames already fit and are returned as they are).
  """
  frames = _check_frames(frames)
  _, height, width, _ = frames.shape
  check_fits_multiple(height, width, multiple, max_side)
  if max_side and max(height, width) > max_side:
    frames = resize_center_crop(frames, *_scaled_down(height, width, max_side))
  scaled_h, scaled_w = frames.shape[1:3]
  target_h, target_w = scaled_h // multiple * multiple, scaled_w // multiple * multiple
  if (target_h, target_w) == (height, width):
    return frames, None
  top, left = (scaled_h - target_h) // 2, (scaled_w - target_w) // 2
  limit = f" and at most {max_side}" if max_side else ""
  message = (f"frames changed from {width}x{height} to {target_w}x{target_h} (width x height): "
             f"sides must be multiples of {multiple}{limit}")
  return frames[:, top:top + target_h, left:left + target_w], message


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 8) -> str:
  """Writes uint8 (T, H, W, 3) frames to .mp4 or .gif (by suffix), atomically; returns the path.

  mp4 is h264 where FFmpeg has libx264, else mpeg4, both yuv420p at near-lossless quality;
  yuv420p needs even sides, so odd ones are padded by repeating the last row or column. gif
  uses one 256-colour palette for the whole clip (no per-frame colour flicker).
  """
  path = os.fspath(path)
  frames = _check_frames(frames)
  if not fps > 0:
    raise InputError("fps", f"must be positive, got {fps!r}", "pass fps > 0")
  suffix = os.path.splitext(path)[1].lower()
  writers = {".mp4": _write_mp4, ".gif": _write_gif}
  if suffix not in writers:
    raise InputError(path, f"unsupported output type {suffix!r}", "name the output .mp4 or .gif")
  with atomic_path(path) as tmp:
    writers[suffix](tmp, frames, fractions.Fraction(fps).limit_denominator(1001))
  return path


def _write_mp4(path: str, frames: np.ndarray, rate: fractions.Fraction) -> None:
  _, height, width, _ = frames.shape
  frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
  # faststart puts the index first, so players and browsers can start before the download ends.
  with av.open(path, "w", format="mp4", options={"movflags": "+faststart"}) as container:
    # Near-lossless quality: crf 12 for h264; fixed quantiser 2 (lambda 2 * 118) for mpeg4.
    options = ({"crf": "12"} if _MP4_CODEC == "libx264" else
               {"flags": "+qscale", "global_quality": str(2 * 118)})
    stream = container.add_stream(_MP4_CODEC, rate=rate, options=options)
    stream.height, stream.width, stream.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())


def _write_gif(path: str, frames: np.ndarray, rate: fractions.Fraction) -> None:
  indices, palette = _shared_palette(frames)
  argb = np.zeros((256, 4), np.uint8)
  argb[:, 0] = 255  # opaque
  argb[:len(palette), 1:] = palette
  with av.open(path, "w", format="gif") as container:
    stream = container.add_stream("gif", rate=rate)
    stream.height, stream.width, stream.pix_fmt = frames.shape[1], frames.shape[2], "pal8"
    for frame in indices:
      container.mux(stream.encode(av.VideoFrame.from_ndarray((frame, argb), format="pal8")))
    container.mux(stream.encode())


def _shared_palette(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Quantises a clip to one palette: (indices uint8 (T, H, W), palette uint8 (P <= 256, 3))."""
  num, height, width, _ = frames.shape
  # The palette comes from up to 16 evenly spaced frames: enough colours, bounded cost.
  sample = frames[np.linspace(0, num - 1, min(num, 16)).round().astype(int)]
  reference = Image.fromarray(sample.reshape(-1, width, 3)).quantize(256, Image.Quantize.MEDIANCUT)
  # No dithering: dither noise changes from frame to frame and reads as flicker.
  mapped = Image.fromarray(frames.reshape(-1, width, 3)).quantize(
      palette=reference, dither=Image.Dither.NONE)
  palette = np.asarray(reference.getpalette(), np.uint8).reshape(-1, 3)[:256]
  return np.asarray(mapped, np.uint8).reshape(num, height, width), palette


# Anchor colours of the colour map, dark (low values) to bright (high values).
_COLOUR_MAP_ANCHORS = np.array(
    [[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]], np.float32)


def depth_to_rgb(depth: np.ndarray) -> np.ndarray:
  """Colours a depth-like clip (T, H, W): uint8 (T, H, W, 3), dark blue (low) -> yellow (high).

  Values are min-max normalised over the whole clip (so frames share one scale and do not
  flicker); non-finite values get the low colour. Pass disparity (1 = near) to show near as bright.
  """
  depth = np.asarray(depth, np.float32)
  if depth.ndim != 3:
    raise InputError("depth", f"got shape {depth.shape}", "pass a depth clip of shape (T, H, W)")
  finite = np.isfinite(depth)
  low, high = (depth[finite].min(), depth[finite].max()) if finite.any() else (0.0, 0.0)
  scaled = np.where(finite, (depth - low) / max(high - low, 1e-12), 0.0)
  position = scaled * (len(_COLOUR_MAP_ANCHORS) - 1)
  lower = np.minimum(position.astype(np.int32), len(_COLOUR_MAP_ANCHORS) - 2)
  weight = (position - lower)[..., None]
  colours = (_COLOUR_MAP_ANCHORS[lower] * (1 - weight) + _COLOUR_MAP_ANCHORS[lower + 1] * weight)
  return (colours + 0.5).astype(np.uint8)


def make_grid(videos: Sequence[np.ndarray], labels: Sequence[str], *,
              label_height: int = 14) -> np.ndarray:
  """Videos side by side (e.g. input | depth | outputs), each under a text label.

  Args:
    videos: uint8 (T_i, H_i, W_i, 3) each; resized to the first one's height (aspect kept).
      Shorter videos hold their last frame.
    labels: one per video, drawn white on black (PIL's default font), clipped to the video width.
    label_height: pixels of the label bar.

  Returns:
    uint8 (max T_i, label_height + H_0, sum of widths, 3).
  """
  if not videos or len(videos) != len(labels):
    raise InputError("make_grid", f"got {len(videos)} videos and {len(labels)} labels",
                     "pass at least one video and one label per video")
  videos = [_check_frames(v, f"make_grid video {i}") for i, v in enumerate(videos)]
  height, length = videos[0].shape[1], max(len(v) for v in videos)
  columns = []
  for video, label in zip(videos, labels):
    if video.shape[1] != height:
      width = max(1, round(video.shape[2] * height / video.shape[1]))
      video = resize_center_crop(video, height, width)
    if len(video) < length:
      video = np.concatenate([video, np.repeat(video[-1:], length - len(video), axis=0)])
    bar = Image.new("RGB", (video.shape[2], label_height))
    ImageDraw.Draw(bar).text((2, 1), label, fill=(255, 255, 255))
    bar = np.broadcast_to(np.asarray(bar), (length, label_height, video.shape[2], 3))
    columns.append(np.concatenate([bar, video], axis=1))
  return np.concatenate(columns, axis=2)
