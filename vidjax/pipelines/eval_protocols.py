"""The video protocols of `vidjax evaluate`: 'folder' (any generated folder against any reference folder) and
'ucf101' (Make-Your-Video's zero-shot UCF-101 FVD/KVD), on top of the resumable job (`vidjax.eval.job`).

Both score I3D features (FVD, KVD) and, for 'folder' when CLIP weights are given, CLIP frame
consistency; features are computed a batch of items at a time, each batch split over every local
device (`features.data_mesh`), and cached per item. Weights come from converted directories
(`WEIGHTS`); `check_weights` refuses a missing one before any work, naming the `vidjax convert` command.
A video that cannot be read is skipped (`job.Skipped`) and listed with its reason; the job then exits 3.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from vidjax.convert import pretrained
from vidjax.data import video_io
from vidjax.errors import ConfigError, InputError, VidjaxError
from vidjax.eval import features, job, metrics
from vidjax.models import i3d

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".gif", ".mpg", ".mpeg")


@dataclasses.dataclass(frozen=True)
class Weights:
  """A converted weights directory a protocol reads: its component and how a user makes it."""

  component: str
  what: str
  convert: str  # the command, with {out} for the directory


WEIGHTS = {
    "i3d_dir": Weights("i3d", "the I3D weights (FVD/KVD features; TATS' / cd-fvd's Kinetics-400 I3D)",
                       "vidjax convert i3d i3d_pretrained_400.pt {out}"),
    "clip_dir": Weights("image_encoder", "the CLIP image tower (frame consistency)",
                        "vidjax convert clip <a transformers CLIP folder, e.g. clip-vit-large-patch14> {out}"),
    "depth_dir": Weights("depth_estimator", "the DPT depth estimator (the structure condition)",
                         "vidjax convert dpt <a transformers DPT folder, e.g. dpt-hybrid-midas> {out}"),
}


def check_weights(config, required: Sequence[str], optional: Sequence[str] = ()) -> None:
  """Refuses (ConfigError) a required weights directory that is unset, or any given one that is absent or incomplete."""
  for field in (*required, *optional):
    spec, path = WEIGHTS[field], config.get(field) or ""
    how = f"convert it: `{spec.convert.format(out=path or 'DIR')}`, then pass --config.{field}=DIR"
    if not path:
      if field in required:
        raise ConfigError(f"config.{field}", f"is empty: protocol {config.protocol!r} needs {spec.what}", how)
      continue
    manifest = os.path.join(path, pretrained.CONFIG_FILE)
    if not os.path.isfile(manifest):
      raise ConfigError(f"config.{field}", f"{manifest} is missing ({spec.what})", how)
    entry = pretrained.read_manifest(path)["components"].get(spec.component)
    weights = os.path.join(path, str((entry or {}).get("weights", f"{spec.component}.safetensors")))
    if entry is None or not os.path.isfile(weights):
      raise ConfigError(f"config.{field}", f"{weights} is missing ({spec.what}, component {spec.component!r})", how)


def list_videos(folder: str, role: str) -> dict[str, str]:
  """{item key: path} of every video file under `folder` (recursive, sorted); keys are `role`-<path>-<hash>."""
  if not folder or not os.path.isdir(folder):
    raise InputError(f"{role} folder {folder!r}", "does not exist", f"pass the folder of {role} videos")
  paths = sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                 if name.lower().endswith(VIDEO_EXTENSIONS))
  if not paths:
    raise InputError(f"{role} folder {folder}", f"holds no videos ({', '.join(VIDEO_EXTENSIONS)})",
                     "point at the folder of the videos to score")
  out = {}
  for path in paths:
    relative = os.path.relpath(path, folder)
    digest = hashlib.sha1(relative.encode()).hexdigest()[:8]  # keeps keys unique after sanitising
    out[f"{role}-{re.sub(r'[^A-Za-z0-9._-]', '_', relative)[-150:]}-{digest}"] = path
  return out


def read_clip(path: str, num_frames: int, stride: int) -> np.ndarray | job.Skipped:
  """The first `num_frames` frames (every `stride`-th) of a video, or Skipped(reason) when it cannot be read."""
  try:
    return video_io.read_video(path, num_frames=num_frames, stride=stride)
  except VidjaxError as e:
    return job.Skipped(str(e))
  except Exception as e:  # noqa: BLE001 -- a decoder error on one file must not end the job
    return job.Skipped(f"{path}: cannot be decoded ({type(e).__name__}: {e})")


def by_shape(clips: Mapping[str, np.ndarray]) -> Iterator[list[str]]:
  """Keys grouped by clip shape (a batch stacks one shape), in first-seen order."""
  groups: dict[tuple[int, ...], list[str]] = {}
  for key, clip in clips.items():
    groups.setdefault(clip.shape, []).append(key)
  return iter(groups.values())


def too_few(count: int, dim: int, role: str, what: str) -> None:
  """Refuses, before any work, a set with fewer videos than the FVD features' dimension."""
  if count < dim:
    raise InputError(f"{role} videos", f"{count} are too few for a stable FVD on {dim}-dimensional {what} "
                     f"(the covariance is singular below {dim})", f"score at least {dim} {role} videos")


def feature_dim(config: i3d.I3DConfig, feature: str) -> int:
  if feature not in ("i3d_logits", "i3d_pooled"):
    raise ConfigError("config.fvd_feature", f"{feature!r} is not an I3D feature", "use 'i3d_logits' or 'i3d_pooled'")
  return config.num_classes if feature == "i3d_logits" else config.width(i3d.FEATURE_DIM)


def run_items(workdir: str, keys: Sequence[str], compute_batch: Callable[[list[str]], Mapping[str, Any]],
              batch_size: int, desc: str) -> tuple[dict[str, job.Features], int, dict[str, str]] | None:
  """This process's slice of `keys` computed (cached) with a tqdm bar; after the barrier, process 0 gets every item.

  Returns (features, computed by this process, {key: skip reason}) on process 0, None elsewhere.
  """
  cache = job.FeatureCache(os.path.join(workdir, "features"))
  mine = job.process_slice(keys, jax.process_index(), jax.process_count())
  with tqdm(total=len(mine), unit="item", desc=desc, disable=None) as bar:
    def progress(done: int, total: int, rate: float) -> None:
      bar.update(1)
      bar.set_postfix(items_per_s=f"{rate:.2f}")

    _, computed, _ = job.cached_batches(cache, mine, compute_batch, batch_size=batch_size, progress=progress)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"{desc}: features cached")
  if jax.process_index() != 0:
    return None
  # Every item is cached now except the skipped ones, which are read (and skipped) again here.
  everything, _, skipped = job.cached_batches(cache, keys, compute_batch, batch_size=batch_size)
  return everything, computed, skipped


def i3d_batch(model: tuple[i3d.I3DConfig, Any], clips: Mapping[str, np.ndarray], config, mesh,
              prefix: str = "") -> dict[str, dict[str, np.ndarray]]:
  """{key: {prefix + 'i3d_logits', prefix + 'i3d_pooled'}} of clips, one sharded run per clip shape."""
  out: dict[str, dict[str, np.ndarray]] = {key: {} for key in clips}
  for group in by_shape(clips):
    got = features.i3d_video_features(*model, np.stack([clips[k] for k in group]), num_frames=config.num_frames,
                                      size=config.i3d_size, batch_size=config.batch_size, mesh=mesh)
    for i, key in enumerate(group):
      out[key].update({prefix + name: value[i] for name, value in got.items()})
  return out


def load_i3d(config) -> tuple[i3d.I3DConfig, Any]:
  return pretrained.load_pretrained(config.i3d_dir, ("i3d",))["i3d"]


def set_metrics(config, feature: str) -> list[metrics.Metric]:
  return [metrics.FVD(feature=feature),
          metrics.KVD(feature=feature, num_subsets=config.kvd_subsets, subset_size=config.kvd_subset_size)]


def run_folder(config, workdir: str) -> dict[str, Any] | None:
  """The 'folder' protocol: features of every generated and reference video; process 0 returns the scores.

  Returns None on other processes, else dict(figures, items, computed, skipped: {key: {source, reason}}).
  """
  check_weights(config, required=("i3d_dir",), optional=("clip_dir",))
  generated, reference = list_videos(config.generated_dir, "generated"), list_videos(config.reference_dir, "reference")
  i3d_config = pretrained.decode_config(pretrained.read_manifest(config.i3d_dir)["components"]["i3d"], config.i3d_dir)
  dim = feature_dim(i3d_config, config.fvd_feature)
  too_few(len(generated), dim, "generated", f"I3D {config.fvd_feature}")
  too_few(len(reference), dim, "reference", f"I3D {config.fvd_feature}")
  paths = {**generated, **reference}
  models: dict[str, Any] = {}  # loaded on the first batch with uncached items
  mesh = features.data_mesh(config.num_devices)

  def compute_batch(keys: list[str]) -> dict[str, Any]:
    if not models:
      models["i3d"] = load_i3d(config)
      if config.clip_dir:
        models["clip"] = pretrained.load_pretrained(config.clip_dir, ("image_encoder",))["image_encoder"]
    read = {key: read_clip(paths[key], config.num_frames, config.stride) for key in keys}
    clips = {k: v for k, v in read.items() if not isinstance(v, job.Skipped)}
    out: dict[str, Any] = {k: v for k, v in read.items() if isinstance(v, job.Skipped)}
    out.update(i3d_batch(models["i3d"], clips, config, mesh) if clips else {})
    mine = {k: clips[k] for k in clips if k in generated}
    if "clip" in models and mine:
      for group in by_shape(mine):
        got = features.clip_frame_features(*models["clip"], [mine[k] for k in group], mesh=mesh)
        for i, key in enumerate(group):
          out[key]["clip_frames"] = got["clip_frames"][i]
    return out

  done = run_items(workdir, list(paths), compute_batch, config.batch_size, "vidjax evaluate folder")
  if done is None:
    return None
  items, computed, skipped = done
  gen_keys, ref_keys = [k for k in generated if k in items], [k for k in reference if k in items]
  too_few(len(gen_keys), dim, "readable generated", f"I3D {config.fvd_feature}")
  too_few(len(ref_keys), dim, "readable reference", f"I3D {config.fvd_feature}")
  gen, ref = job.stack(items, gen_keys, [config.fvd_feature]), job.stack(items, ref_keys, [config.fvd_feature])
  figures = [m(gen, ref) for m in set_metrics(config, config.fvd_feature)]
  per_item: dict[str, dict[str, float]] = {k: {} for k in gen_keys}
  if config.clip_dir:
    consistency = metrics.FrameConsistency()
    frames = job.stack(items, gen_keys, ["clip_frames"])
    figures.append(consistency(frames))
    per_item = {k: {consistency.name: float(v)} for k, v in zip(gen_keys, consistency.per_item(frames))}
  return dict(figures=figures, items=gen_keys + ref_keys, computed=computed, per_item=per_item,
              videos={k: paths[k] for k in gen_keys},
              skipped={k: {"source": paths[k], "reason": r} for k, r in skipped.items()})


# --- UCF-101 (Make-Your-Video's zero-shot protocol) --------------------------------------------------

def class_prompt(name: str) -> str:
  """A UCF-101 class name as the text condition: 'ApplyEyeMakeup' -> 'apply eye makeup' (CamelCase split)."""
  words = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name)
  return " ".join(w.lower() for w in words) or name


def ucf101_folder_items(folder: str) -> dict[str, tuple[str, str]]:
  """{key: (path, class name)} of a UCF-101 folder laid out as <folder>/<ClassName>/v_<ClassName>_gXX_cYY.avi."""
  videos = list_videos(folder, "ucf")
  return {key: (path, os.path.basename(os.path.dirname(path))) for key, path in videos.items()}


def sample_keys(keys: Sequence[str], count: int, seed: int) -> list[str]:
  """`count` keys drawn without replacement with default_rng(seed), in their listed order (all when fewer)."""
  if count >= len(keys):
    return list(keys)
  chosen = np.random.default_rng(seed).choice(len(keys), count, replace=False)
  return [keys[i] for i in sorted(chosen)]


class TfdsClips:
  """Clips of a TFDS video builder (`ucf101`) prepared locally in the array_record format, read by index.

  Nothing is downloaded: an unprepared builder is an InputError saying how to prepare it.
  """

  def __init__(self, name: str, data_dir: str, split: str, num_frames: int, stride: int):
    import tensorflow_datasets as tfds  # optional and heavy: only this source needs it

    try:
      builder = tfds.builder(name, data_dir=data_dir or None)
      self.source = builder.as_data_source(split=split)
      self.names = builder.info.features["label"].names
    except Exception as e:  # noqa: BLE001 -- tfds raises many kinds for an absent or unprepared dataset
      reason = " ".join(str(e).split())[:300]  # one line: tfds' messages span several
      raise InputError(f"TFDS {name}/{split} under {data_dir!r}", f"cannot be opened ({type(e).__name__}: {reason})",
                       _TFDS_FIX) from e
    self.where, self.num_frames, self.stride = f"tfds {name} {split}", num_frames, stride

  def __len__(self) -> int:
    return len(self.source)

  def clip(self, index: int) -> tuple[np.ndarray, str] | job.Skipped:
    example = self.source[index]
    video = np.asarray(example["video"])[::self.stride][:self.num_frames]
    if len(video) < self.num_frames:
      return job.Skipped(f"{self.where}[{index}]: {len(video)} frames at stride {self.stride}, the protocol takes "
                         f"{self.num_frames}")
    return video, self.names[int(example["label"])]


_TFDS_FIX = ("prepare it yourself with file_format='array_record' (`tfds build ucf101 --data_dir DIR "
             "--file_format array_record`; vidjax downloads nothing) and pass "
             "--config.tfds_data_dir=DIR, or use --config.real_source=folder --config.ucf101_dir=UCF-101")


def run_ucf101(config, workdir: str, generate: Callable[[np.ndarray, str, int], np.ndarray]) -> dict[str, Any] | None:
  """Make-Your-Video's zero-shot UCF-101 FVD/KVD: `num_samples` real clips, each generated from its depth and class.

  Per item: the real clip (`num_frames` frames every `stride`-th, resized and centre-cropped to
  `size`), `generate(clip, prompt, seed)` -> the model's uint8 clip, and the I3D features of both
  (the generated set's as 'i3d_*', the real set's as 'real_i3d_*'). Returns as `run_folder`.
  """
  check_weights(config, required=("i3d_dir",), optional=("depth_dir",))
  i3d_config = pretrained.decode_config(pretrained.read_manifest(config.i3d_dir)["components"]["i3d"], config.i3d_dir)
  dim = feature_dim(i3d_config, config.fvd_feature)
  too_few(config.num_samples, dim, "config.num_samples", f"I3D {config.fvd_feature}")
  if config.real_source == "folder":
    listed = ucf101_folder_items(config.ucf101_dir)
    keys = sample_keys(list(listed), config.num_samples, config.seed)

    def real(key: str) -> tuple[np.ndarray, str] | job.Skipped:
      path, name = listed[key]
      clip = read_clip(path, config.num_frames, config.stride)
      return clip if isinstance(clip, job.Skipped) else (clip, name)

    source = {k: listed[k][0] for k in keys}
  elif config.real_source == "tfds":
    tfds_clips = TfdsClips(config.tfds_name, config.tfds_data_dir, config.tfds_split, config.num_frames, config.stride)
    indices = sample_keys([str(i) for i in range(len(tfds_clips))], config.num_samples, config.seed)
    keys = [f"tfds-{int(i):07d}" for i in indices]
    real = lambda key: tfds_clips.clip(int(key.split("-")[1]))
    source = {k: f"{tfds_clips.where}[{int(k.split('-')[1])}]" for k in keys}
  else:
    raise ConfigError("config.real_source", f"{config.real_source!r}", "use 'folder' or 'tfds'")
  too_few(len(keys), dim, "UCF-101", f"I3D {config.fvd_feature}")
  models: dict[str, Any] = {}
  mesh = features.data_mesh(config.num_devices)
  seeds = {key: config.seed + i for i, key in enumerate(keys)}

  def compute_batch(batch: list[str]) -> dict[str, Any]:
    if not models:
      models["i3d"] = load_i3d(config)
    out: dict[str, Any] = {}
    real_clips, generated = {}, {}
    for key in batch:
      got = real(key)
      if isinstance(got, job.Skipped):
        out[key] = got
        continue
      clip = video_io.resize_center_crop(got[0], config.size, config.size)
      real_clips[key], generated[key] = clip, np.asarray(generate(clip, class_prompt(got[1]), seeds[key]))
      video_io.write_video(os.path.join(workdir, "videos", key + ".gif"), generated[key])
    if real_clips:
      out.update(i3d_batch(models["i3d"], generated, config, mesh))
      for key, values in i3d_batch(models["i3d"], real_clips, config, mesh, prefix="real_").items():
        out[key].update(values)
    return out

  done = run_items(workdir, keys, compute_batch, config.batch_size, "vidjax evaluate ucf101")
  if done is None:
    return None
  items, computed, skipped = done
  scored = [k for k in keys if k in items]
  too_few(len(scored), dim, "readable UCF-101", f"I3D {config.fvd_feature}")
  gen = job.stack(items, scored, [config.fvd_feature])
  ref = {config.fvd_feature: job.stack(items, scored, ["real_" + config.fvd_feature])["real_" + config.fvd_feature]}
  figures = [m(gen, ref) for m in set_metrics(config, config.fvd_feature)]
  return dict(figures=figures, items=scored, computed=computed, per_item={k: {} for k in scored},
              videos={k: os.path.join(workdir, "videos", k + ".gif") for k in scored},
              skipped={k: {"source": source[k], "reason": r} for k, r in skipped.items()})
