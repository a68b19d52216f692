"""The clip policy of the shard builder: which T-frame clips a decoded video gives.

A clip is T frames taken `stride` frames apart starting at frame `start`: frames start, start + s,
..., start + (T-1)s, so it needs `span` = (T-1)s + 1 frames of the video. The default policy is one
clip from frame 0 (the builder's first behaviour, so default shards keep their bytes). Otherwise:

  clip_stride      frames between consecutive clip starts; 0 = one span (back-to-back clips).
  clips_per_video  at most this many clips a video (1 by default); 0 = every clip that fits.
  clip_offsets     'fixed': starts at frame 0, clip_stride, 2 clip_stride, ... and the first
                   clips_per_video of them; 'random': the grid shifted by a random phase in
                   [0, clip_stride) and a random choice of clips_per_video of its starts (kept in
                   order), both drawn from (seed, the item's key), so a rebuild draws the same clips.
  min_video_frames a video with fewer frames is skipped (0 = one span, the least a clip needs).
  scene_cut_threshold  0 = off; else a cut lies before frame i when the mean absolute difference of
                   frames i-1 and i (uint8 RGB, 0..255) exceeds it, and no clip crosses a cut: the
                   grid restarts at each scene, and a scene shorter than a span gives no clip. Hard
                   cuts differ by 40-100 on this scale and smooth motion by a few units, so 30 is a
                   sensible first value (a simple detector: a fade is no cut).

Under any policy but the default, examples record their start frame (`start_frame`) and their key
is `<item key>@<start frame>`, so the clips of one video have distinct keys.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from vidjax.errors import InputError

CLIP_OFFSETS = ("fixed", "random")


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """Clip geometry (T frames `stride` apart, resized and cropped to H x W) and the clip policy above.

  min_source_side: the smallest side, in source pixels, of the centre crop a clip is scaled from; 0 takes any.
  """

  num_frames: int
  stride: int
  height: int
  width: int
  min_source_side: int = 16
  clips_per_video: int = 1
  clip_stride: int = 0
  clip_offsets: str = "fixed"
  seed: int = 0
  min_video_frames: int = 0
  scene_cut_threshold: float = 0.0

  @property
  def span(self) -> int:
    """Frames a video needs to hold one clip."""
    return (self.num_frames - 1) * self.stride + 1

  @property
  def from_start(self) -> bool:
    """The default policy: one clip from frame 0 (examples then carry no start frame)."""
    return (self.clips_per_video == 1 and self.clip_offsets == "fixed" and not self.scene_cut_threshold)

  @property
  def frames_needed(self) -> int | None:
    """How many leading frames of a video the policy can use (None: all of them)."""
    if self.clip_offsets == "fixed" and not self.scene_cut_threshold and self.clips_per_video:
      return max((self.clips_per_video - 1) * self.step + self.span, self.min_video_frames)
    return None

  @property
  def step(self) -> int:
    return self.clip_stride or self.span

  def check(self) -> ClipSpec:
    """Returns self, or raises InputError naming the flag that is out of range."""
    fix = "see `vidjax build-shards --help`"
    for name in ("num_frames", "stride", "height", "width"):
      if getattr(self, name) < 1:
        raise InputError(f"--{name}", f"must be >= 1, got {getattr(self, name)}", fix)
    for name in ("min_source_side", "clips_per_video", "clip_stride", "min_video_frames"):
      if getattr(self, name) < 0:
        raise InputError(f"--{name}", f"must be >= 0, got {getattr(self, name)}", fix)
    if self.clip_offsets not in CLIP_OFFSETS:
      raise InputError(f"--clip_offsets {self.clip_offsets}", "unknown clip offsets", f"use one of {CLIP_OFFSETS}")
    if not self.scene_cut_threshold >= 0:
      raise InputError("--scene_cut_threshold", f"must be >= 0, got {self.scene_cut_threshold}", fix)
    return self


def scene_bounds(video: np.ndarray, threshold: float) -> list[tuple[int, int]]:
  """[(first, end)) frame ranges of the scenes of a video (N, H, W, C), cut where frames differ by > threshold."""
  if not threshold or len(video) < 2:
    return [(0, len(video))]
  difference = np.abs(np.diff(np.asarray(video, np.int16), axis=0)).mean(axis=(1, 2, 3))
  cuts = [0] + [int(i) + 1 for i in np.flatnonzero(difference > threshold)] + [len(video)]
  return list(zip(cuts[:-1], cuts[1:]))


def _rng(clip: ClipSpec, key: str) -> np.random.Generator:
  """The item's own generator: a rebuild, in any process, draws the same offsets."""
  digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
  return np.random.default_rng([clip.seed, digest])


def clip_starts(num_video_frames: int, clip: ClipSpec, key: str,
                scenes: list[tuple[int, int]] | None = None) -> list[int]:
  """The start frames of the clips a video of `num_video_frames` frames gives, in order."""
  rng = _rng(clip, key)
  starts = []
  for first, end in scenes or [(0, num_video_frames)]:
    room = end - first - clip.span  # the last start of this scene is first + room
    if room < 0:
      continue
    phase = int(rng.integers(0, min(clip.step, room + 1))) if clip.clip_offsets == "random" else 0
    starts += range(first + phase, first + room + 1, clip.step)
  if clip.clips_per_video and len(starts) > clip.clips_per_video:
    if clip.clip_offsets == "random":
      starts = sorted(rng.choice(starts, clip.clips_per_video, replace=False).tolist())
    else:
      starts = starts[:clip.clips_per_video]
  return [int(s) for s in starts]


def cut_clips(video: np.ndarray, clip: ClipSpec, name: str, key: str) -> list[tuple[int, np.ndarray]]:
  """[(start frame, frames (T, H', W', C))] of a decoded video (N, H', W', C); InputError naming `name` if none."""
  needed = max(clip.span, clip.min_video_frames)
  if video.shape[0] < needed:
    what = (f"a clip of {clip.num_frames} frames at stride {clip.stride} needs {clip.span}"
            if needed == clip.span else f"--min_video_frames is {clip.min_video_frames}")
    raise InputError(name, f"too short: {video.shape[0]} frames, {what}",
                     "lower --num_frames or --stride, or drop the video")
  if clip.from_start:
    return [(0, video[:clip.span:clip.stride])]
  scenes = scene_bounds(video, clip.scene_cut_threshold)
  starts = clip_starts(video.shape[0], clip, key, scenes)
  if not starts:
    raise InputError(name, f"no scene of {clip.span} frames or more: {len(scenes)} scenes at "
                     f"--scene_cut_threshold {clip.scene_cut_threshold}",
                     "raise --scene_cut_threshold, or drop the video")
  return [(s, video[s:s + clip.span:clip.stride]) for s in starts]
