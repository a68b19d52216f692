"""Clip sources for the shard builder: the toy world, a folder of captioned videos, a TFDS dataset.

A source lists cheap `Item` references first (so the builder can plan shards before decoding
anything) and then loads one item at a time into a `SourceClip`, in whichever process builds that
item's shard, as the clips the clip policy (`vidjax.data.clips`) cuts from it: by default one, the
first T frames at a stride of its video (frames 0, s, ..., (T-1)s), resized and centre-cropped to H x W.
A video with fewer than (T-1)*s + 1 frames is too short: it is reported and skipped, not padded,
because padding would teach the model frozen motion.

Frames smaller than the clip are upscaled, and each such clip carries a warning saying by how much; a
source whose centre crop (the pixels the clip is made from) has a side under `min_source_side` is skipped
instead, as `vidjax edit` refuses frames under its size multiple (16 for the toy checkpoint).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import json
import os
import re
from typing import Any

import numpy as np

from vidjax.data.clips import ClipSpec, cut_clips
from vidjax.errors import InputError

__all__ = ["ClipSpec", "FolderSource", "Item", "SourceClip", "TfdsSource", "ToySource"]


@dataclasses.dataclass(frozen=True)
class Item:
  """A reference to one clip: `key` is its id in the shards, `ref` what the source loads."""

  key: str
  ref: Any
  caption: str = ""


@dataclasses.dataclass(frozen=True, eq=False)
class SourceClip:
  """One loaded clip.

  Attributes:
    key, caption: as in `Item` (the key gains `@<start_frame>` under a policy other than the default).
    frames: uint8 (T, H, W, 3).
    depth: float32 (T, H, W) in [0, 1], ground-truth inverse depth when the source has it.
    masks: uint8 (T, H, W) object labels (0 = background) when the source has them.
    warnings: what loading changed that the build report should say (e.g. an upscale).
    start_frame: the video frame the clip starts at.
  """

  key: str
  caption: str
  frames: np.ndarray
  depth: np.ndarray | None = None
  masks: np.ndarray | None = None
  warnings: tuple[str, ...] = ()
  start_frame: int = 0


def video_clips(video: np.ndarray, clip: ClipSpec, name: str, item: Item, caption: str) -> list[SourceClip]:
  """The clips of a decoded video (N, h, w, C), fitted to H x W; InputError naming `name` if it gives none."""
  out = []
  for start, frames in cut_clips(video, clip, name, item.key):
    fitted, warnings = _fit(frames, clip, name)
    key = item.key if clip.from_start else f"{item.key}@{start}"
    out.append(SourceClip(key, caption, fitted, warnings=warnings, start_frame=start))
  return out


def _fit(frames: np.ndarray, clip: ClipSpec, name: str) -> tuple[np.ndarray, tuple[str, ...]]:
  """Frames (T, h, w, C) -> (uint8 (T, H, W, 3), warnings): scaled to cover H x W and centre-cropped.

  InputError naming `name` when the crop has a side under clip.min_source_side; a warning when it is upscaled.
  """
  from vidjax.data import video_io  # pylint: disable=g-import-not-at-top
  if frames.shape[-1] == 1:
    frames = np.repeat(frames, 3, axis=-1)
  source_h, source_w = frames.shape[1:3]
  scale = max(clip.height / source_h, clip.width / source_w)  # as resize_center_crop scales
  crop_h, crop_w = round(clip.height / scale), round(clip.width / scale)
  crop = f"{crop_w}x{crop_h} centre crop of {source_w}x{source_h}"
  if min(crop_h, crop_w) < clip.min_source_side:
    raise InputError(name, f"too small: the {clip.width}x{clip.height} clip would be upscaled x{scale:.3g} from the "
                     f"{crop}, a side under --min_source_side {clip.min_source_side}",
                     "drop the video, or lower --min_source_side (0 takes any size)")
  warnings = (f"upscaled x{scale:.3g}: the {crop} to the {clip.width}x{clip.height} clip",) if scale > 1 else ()
  return video_io.resize_center_crop(np.asarray(frames, np.uint8), clip.height, clip.width), warnings


@dataclasses.dataclass(frozen=True)
class ToySource:
  """`num_examples` procedural toy-world clips; item i renders scene seed hash(seed, i)."""

  num_examples: int
  seed: int
  with_masks: bool = False
  kind = "toy"

  @property
  def description(self) -> str:
    return f"toy world, {self.num_examples} scenes, seed {self.seed}"

  def items(self) -> list[Item]:
    seeds = np.random.SeedSequence(self.seed).generate_state(self.num_examples)
    return [Item(key=f"toy/{self.seed}/{i:06d}", ref=int(s)) for i, s in enumerate(seeds)]

  def load(self, item: Item, clip: ClipSpec) -> list[SourceClip]:
    from vidjax import toyworld  # pylint: disable=g-import-not-at-top
    if not clip.from_start:
      raise InputError("--source toy", "a toy scene is rendered as one clip from its start",
                       "leave --clips_per_video, --clip_offsets and --scene_cut_threshold at their defaults")
    toy = toyworld.render_clip(item.ref, num_frames=clip.num_frames, height=clip.height,
                               width=clip.width, stride=clip.stride)
    masks = None
    if self.with_masks:
      labels = np.arange(1, toy.masks.shape[1] + 1, dtype=np.uint8)[None, :, None, None]
      masks = (toy.masks * labels).max(axis=1, initial=0).astype(np.uint8)
    return [SourceClip(item.key, toy.caption, toy.rgb, toy.disparity, masks)]


@dataclasses.dataclass(frozen=True)
class FolderSource:
  """Videos listed in a captions file (CSV with a header, or JSONL) with `path` and `caption`.

  Relative paths resolve against the captions file's folder, as WebVid's metadata is laid out
  next to its videos. An item's key is its `path` without the extension.
  """

  captions: str
  num_examples: int | None = None
  kind = "folder"

  @property
  def description(self) -> str:
    return f"videos listed in {os.path.abspath(self.captions)}"

  def items(self) -> list[Item]:
    rows = _read_caption_rows(self.captions)
    root = os.path.dirname(os.path.abspath(self.captions))
    items = []
    for row in rows[:self.num_examples]:
      path = str(row["path"])
      key = os.path.splitext(path)[0].replace(os.sep, "/").lstrip("/")
      items.append(Item(key=key, ref=os.path.join(root, path), caption=str(row["caption"])))
    duplicates = [k for k, n in collections.Counter(i.key for i in items).items() if n > 1]
    if duplicates:
      duplicate = duplicates[0]
      raise InputError(self.captions, f"two videos share the key {duplicate!r} (path without "
                       "extension)", "give every video its own path stem")
    return items

  def load(self, item: Item, clip: ClipSpec) -> list[SourceClip]:
    from vidjax.data import video_io  # pylint: disable=g-import-not-at-top
    # Decoding passes every frame up to the last one used anyway, so read those and pick.
    video = video_io.read_video(item.ref, max_frames=clip.frames_needed)
    return video_clips(video, clip, item.ref, item, item.caption)


def _read_caption_rows(path: str) -> list[dict[str, Any]]:
  fix = "give a CSV with a header row, or a JSONL file, with 'path' and 'caption' columns"
  if not os.path.isfile(path):
    raise InputError(path, "captions file not found", fix)
  try:
    with open(path, newline="", encoding="utf-8") as f:
      if path.lower().endswith((".jsonl", ".json")):
        rows = [json.loads(line) for line in f if line.strip()]
      else:
        rows = list(csv.DictReader(f))
  except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
    raise InputError(path, f"unreadable captions file ({e})", fix) from e
  for number, row in enumerate(rows, start=1):
    if not isinstance(row, dict) or not {"path", "caption"} <= set(row):
      raise InputError(path, f"row {number} lacks 'path' or 'caption'", fix)
  if not rows:
    raise InputError(path, "no rows", fix)
  return rows


@dataclasses.dataclass(frozen=True)
class TfdsSource:
  """A TFDS video dataset read through `tfds.data_source` (ArrayRecord, no TensorFlow needed).

  Captions are the class names of `label_key`, split into words ("ApplyEyeMakeup" -> "apply eye
  makeup"). The dataset must be prepared in `data_dir` in the array_record file format.
  """

  name: str
  split: str = "train"
  data_dir: str | None = None
  num_examples: int | None = None
  video_key: str = "video"
  label_key: str = "label"
  kind = "tfds"

  @property
  def description(self) -> str:
    return f"TFDS {self.name}, split {self.split}"

  def items(self) -> list[Item]:
    source, _ = _open_tfds(self.name, self.split, self.data_dir, self.label_key)
    count = len(source) if self.num_examples is None else min(self.num_examples, len(source))
    return [Item(key=f"{self.name}/{self.split}/{i}", ref=i) for i in range(count)]

  def load(self, item: Item, clip: ClipSpec) -> list[SourceClip]:
    source, names = _open_tfds(self.name, self.split, self.data_dir, self.label_key)
    example = source[item.ref]
    caption = humanise(names[int(example[self.label_key])])
    return video_clips(np.asarray(example[self.video_key]), clip, item.key, item, caption)


@functools.lru_cache(maxsize=4)
def _open_tfds(name: str, split: str, data_dir: str | None, label_key: str):
  """(random-access source, label names), opened once per process."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  fix = "prepare it in --tfds_data_dir with file_format='array_record', or check the name"
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    source = builder.as_data_source(split=split)
    names = builder.info.features[label_key].names
  except (tfds.core.registered.DatasetNotFoundError, ModuleNotFoundError, KeyError,
          FileNotFoundError, ValueError, AssertionError) as e:
    raise InputError(f"tfds:{name}/{split}", f"cannot open ({type(e).__name__}: {e})", fix) from e
  return source, tuple(names)


def humanise(class_name: str) -> str:
  """'ApplyEyeMakeup' -> 'apply eye makeup'; 'playing_guitar' -> 'playing guitar'."""
  words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", class_name.replace("_", " "))
  return " ".join(words.lower().split())
