"""Grain input pipeline over clip shards: shuffle, per-process shard, t_s augmentation, mixing.

  loader = Loader(config)            # config: default_loader_config() with data_dir etc. set
  batch = next(loader)
  state = loader.get_state()         # JSON-serialisable; put it in the checkpoint
  Loader(config).set_state(state)    # continues with exactly the batches that would have followed

Batches (per process; B = batch_size, T = num_frames of the manifest, N = B for a video batch and
image_batch_size, default B * T, for an image batch, whose time axis has length 1; H x W is the
stored size, or an image batch's bucket when image_buckets is set):
  frames              float32 (N, T|1, H, W, 3) in [-1, 1]   (absent when use_latents)
  latents             float32 (N, T|1, h, w, 4)              (only when use_latents)
  depth               float32 (N, T|1, H, W, 1) as stored ([0, 1], 1 = near) after the t_s blur; the
                      model normalises it (`VideoDiffusionModel.encode_structure`, once)
  structure_fidelity  int32 (N,), the paper's t_s, uniform in [min, max] of the config
  tokens              int32 (N, L), the caption's token ids padded to L (absent without tokenizer_dir:
                      image-content training, Gen-1's, reads no captions)
  object_mask         float32 (N, T|1, H, W, 1), 1 on object pixels (only when the shards hold masks)
  is_image            bool, 0-d: True for an image batch

How the stream is made, and why:
  - Records are shuffled globally by `seed` (a new permutation each epoch) and process p of P takes
    every P-th record, so processes see disjoint data that together covers each epoch, and every
    process yields the same number of batches.
  - Each batch is one element of a Grain `MapDataset`, computed from its step index alone. Hence
    worker processes (each computes every worker_count-th batch) give the same batches as none, the
    iterator state is just a position, and restoring it replays the stream exactly.
  - Whether step k is an image batch is drawn from (seed, k) only: every process agrees on the
    batch shape and a restored run makes the same choices (Gen-1 samples image batches with
    probability 12.5%). An image batch takes single frames from the clips that step would have
    used, so the data order does not depend on the mixing; Gen-1's image batch of 9216 equals its
    video batch of 1152 x 8 frames, which is our default.
  - Image batches at aspect-ratio buckets (`image_buckets`, off by default): each image batch takes
    one (height, width) of the list, drawn uniformly from (seed, step) like the image/video choice,
    and its frames, depth and masks are scaled to cover it and centre-cropped on one geometry
    (`video_io.resize_center_crop`). Gen-1 trains images at 320x320, 384x320, 448x256 and their
    flips (configs/gen1.py). A batch is one array, so a bucket is per batch, not per frame. We draw
    it per step rather than from each source's aspect (SDXL's rule for images of many shapes): the
    frames of a shard folder all have its one stored size, so an aspect rule would always pick the
    same bucket; a draw from (seed, step) uses every bucket, every process agrees on the shape, and a
    restored run replays it. The train step is jitted, so each bucket compiles it once more (as in
    SDXL's trainers); `check_image_buckets` refuses sizes the model cannot take.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Mapping

import grain
import jax
import ml_collections
import numpy as np

from vidjax.conditioning import structure
from vidjax.conditioning.tokens import tokenize
from vidjax.data import records, video_io
from vidjax.errors import ConfigError, InputError, is_number



def default_loader_config() -> ml_collections.ConfigDict:
  """Loader settings; batch sizes are per process."""
  config = ml_collections.ConfigDict()
  config.data_dir = ""  # shard folder with manifest.json (data_pipelines/build_shards.py)
  config.tokenizer_dir = ""  # transformers tokenizer folder (toy: vidjax.toyworld.save_tokenizer); "" = no tokens
  config.max_caption_tokens = 0  # L; 0 = the tokenizer's model_max_length
  config.batch_size = 8  # clips per video batch
  config.image_fraction = 0.125  # Gen-1: image batches with probability 12.5%
  config.image_batch_size = 0  # frames per image batch; 0 = batch_size * num_frames
  # ((height, width), ...) an image batch is resized to, one per batch from (seed, step); () = stored size
  config.image_buckets = ()
  config.structure_fidelity_min = 0  # t_s ~ U{min, ..., max}; Gen-1's last stage: 0..7
  config.structure_fidelity_max = 7
  config.seed = 0
  config.shuffle = True
  config.num_epochs = 0  # 0 = repeat forever
  config.use_latents = False  # read cached VAE latents instead of frames
  config.worker_count = 0  # Grain worker processes; 0 = batches are made in this process
  config.worker_buffer_size = 2  # batches each worker prepares ahead
  config.read_threads = 2  # threads making batches in this process (or in each worker)
  config.prefetch_batches = 4
  return config


@dataclasses.dataclass(frozen=True)
class BatchSettings:
  """What `AssembleBatch` needs; plain data so Grain can pickle it to worker processes."""

  folder: str
  fields: Mapping[str, records.FieldSpec]
  seed: int
  process_index: int
  image_fraction: float
  image_batch_size: int
  image_buckets: tuple[tuple[int, int], ...]
  structure_fidelity_range: tuple[int, int]
  tokenizer_dir: str
  max_caption_tokens: int
  use_latents: bool


def is_image_step(seed: int, step: int, image_fraction: float) -> bool:
  """Whether batch `step` is an image batch: a function of (seed, step) alone."""
  return bool(np.random.default_rng([seed, step]).random() < image_fraction)


def image_bucket(seed: int, step: int, buckets: tuple[tuple[int, int], ...]) -> tuple[int, int] | None:
  """The (height, width) of image batch `step`, uniform over `buckets`: a function of (seed, step)
  alone (None without buckets)."""
  if not buckets:
    return None
  # Not [seed, step, 0]: SeedSequence pads entropy with zeros, so that would be is_image_step's own
  # stream; [seed, step, p + 1] are the per-process streams. Four words are none of them.
  return tuple(buckets[np.random.default_rng([seed, step, 0, 1]).integers(len(buckets))])


def check_image_buckets(buckets: Any, size_multiple: int = 1) -> tuple[tuple[int, int], ...]:
  """`data.image_buckets` as a tuple of (height, width) ints, each side a multiple of `size_multiple`.

  The loader checks the form (multiple 1); the trainer, which knows the model, checks the sizes
  with its size multiple (VAE factor x UNet downsampling). ConfigError naming the field otherwise.
  """
  fix = "give ((height, width), ...) with sides that are positive multiples of the model's size multiple"
  if not isinstance(buckets, (tuple, list)):
    raise ConfigError("data.image_buckets", f"{buckets!r} is not a tuple of (height, width) pairs", fix)
  out = []
  for bucket in buckets:
    if (not isinstance(bucket, (tuple, list)) or len(bucket) != 2
        or not all(is_number(side, integer=True) and side >= 1 for side in bucket)):
      raise ConfigError("data.image_buckets", f"{bucket!r} is not a (height, width) pair of positive integers", fix)
    height, width = int(bucket[0]), int(bucket[1])
    if height % size_multiple or width % size_multiple:
      nearest = tuple(max(1, int(side / size_multiple + 0.5)) * size_multiple for side in (height, width))
      raise ConfigError("data.image_buckets", f"{height}x{width} (height x width) has a side that is not a "
                        f"multiple of the model's size multiple {size_multiple} (VAE factor x UNet downsampling)",
                        f"use sides that are multiples of {size_multiple}, e.g. {nearest}")
    out.append((height, width))
  return tuple(out)


def _augment_depth(depth: np.ndarray, structure_fidelity: np.ndarray) -> np.ndarray:
  """float32 (N, T, H, W) in [0, 1] -> (N, T, H, W, 1), blurred by t_s per sample (not normalised: the model does)."""
  out = np.empty(depth.shape, np.float32)
  for t in np.unique(structure_fidelity):
    chosen = structure_fidelity == t
    out[chosen] = structure.augment_structure(depth[chosen], int(t))
  return out[..., None]


class AssembleBatch(grain.transforms.MapWithIndex):
  """Decodes a step's records into a batch dict (see the module docstring)."""

  def __init__(self, settings: BatchSettings):
    self.settings = settings

  def map_with_index(self, index: int, element: list[bytes]) -> dict[str, np.ndarray]:
    s = self.settings
    examples = [records.decode_example(r, s.fields, where=f"{s.folder} batch {index}")
                for r in element]
    pixels = "latents" if s.use_latents else "frames"
    names = (pixels, "depth") + (("masks",) if "masks" in s.fields else ())
    clips = {name: np.stack([e[name] for e in examples]) for name in names}
    captions = [e["caption"] for e in examples]
    rng = np.random.default_rng([s.seed, index, s.process_index + 1])
    is_image = is_image_step(s.seed, index, s.image_fraction)
    if is_image:
      clips, captions = _image_batch(clips, captions, s.image_batch_size, rng)
      bucket = image_bucket(s.seed, index, s.image_buckets)
      if bucket is not None:
        clips = _resize_to_bucket(clips, bucket)
    low, high = s.structure_fidelity_range
    fidelity = rng.integers(low, high + 1, size=len(captions)).astype(np.int32)
    pixel_values = clips[pixels].astype(np.float32)
    if pixels == "frames":
      pixel_values = pixel_values / 127.5 - 1.0
    batch = {
        pixels: pixel_values,
        "depth": _augment_depth(clips["depth"].astype(np.float32), fidelity),
        "structure_fidelity": fidelity,
        "is_image": np.asarray(is_image),
    }
    if s.tokenizer_dir:
      batch["tokens"] = tokenize(captions, s.tokenizer_dir, s.max_caption_tokens)
    if "masks" in clips:
      batch["object_mask"] = (clips["masks"] > 0).astype(np.float32)[..., None]
    return batch


def _image_batch(clips: dict[str, np.ndarray], captions: list[str], size: int,
                 rng: np.random.Generator) -> tuple[dict[str, np.ndarray], list[str]]:
  """`size` distinct frames of the clips (B, T, ...) as one-frame clips (size, 1, ...)."""
  num_clips, num_frames = next(iter(clips.values())).shape[:2]
  chosen = rng.permutation(num_clips * num_frames)[:size]
  frames = {name: v.reshape((-1, 1) + v.shape[2:])[chosen] for name, v in clips.items()}
  return frames, [captions[i // num_frames] for i in chosen]


def _resize_to_bucket(clips: dict[str, np.ndarray], bucket: tuple[int, int]) -> dict[str, np.ndarray]:
  """An image batch's frames uint8 (N, 1, H, W, 3), depth (N, 1, H, W) and masks (N, 1, H, W) as stored
  -> the same at (N, 1, *bucket, ...): scaled to cover the bucket and centre-cropped, one geometry for all.

  Depth is clipped back to [0, 1] and masks thresholded (bicubic overshoots at steps); masks come out
  as 0/1, which is all the batch keeps of them (`object_mask`).
  """
  height, width = bucket
  maps = lambda values: video_io.resize_center_crop_maps(values[:, 0], height, width)[:, None]
  out = {"frames": video_io.resize_center_crop(clips["frames"][:, 0], height, width)[:, None],
         "depth": np.clip(maps(clips["depth"]), 0.0, 1.0)}
  if "masks" in clips:
    out["masks"] = (maps((clips["masks"] > 0).astype(np.float32)) > 0.5).astype(np.uint8)
  return out


def _settings(config: ml_collections.ConfigDict, manifest: records.Manifest,
              process_index: int) -> BatchSettings:
  """Checks the config against the manifest and freezes what the batch transform needs."""
  max_image_batch = config.batch_size * manifest.num_frames
  image_batch_size = config.image_batch_size or max_image_batch
  low, high = config.structure_fidelity_min, config.structure_fidelity_max
  problems = [
      (config.batch_size < 1, "batch_size must be >= 1"),
      (not 0 <= config.image_fraction <= 1, "image_fraction must be in [0, 1]"),
      (not 1 <= image_batch_size <= max_image_batch,
       f"image_batch_size must be in [1, batch_size * num_frames = {max_image_batch}]"),
      (not 0 <= low <= high, "need 0 <= structure_fidelity_min <= structure_fidelity_max"),
      (config.use_latents and bool(config.image_buckets),
       "image_buckets resize pixel frames, but use_latents reads latents cached at the stored size"),
      (config.use_latents and "latents" not in manifest.fields,
       f"use_latents is set but {config.data_dir} holds no latents"),
  ]
  for failed, problem in problems:
    if failed:
      raise ConfigError("data config", problem, "fix the data section of the config")
  buckets = check_image_buckets(config.image_buckets)
  return BatchSettings(
      folder=config.data_dir, fields=manifest.fields, seed=config.seed,
      process_index=process_index, image_fraction=config.image_fraction,
      image_batch_size=image_batch_size, image_buckets=buckets, structure_fidelity_range=(low, high),
      tokenizer_dir=config.tokenizer_dir, max_caption_tokens=config.max_caption_tokens,
      use_latents=config.use_latents)


def batch_dataset(config: ml_collections.ConfigDict, process_index: int,
                  process_count: int) -> tuple[grain.MapDataset, records.Manifest]:
  """The batches of one process as a random-access Grain MapDataset (index = step)."""
  manifest = records.read_manifest(config.data_dir)
  settings = _settings(config, manifest, process_index)
  paths = records.shard_paths(config.data_dir, manifest)
  if manifest.num_examples // process_count < config.batch_size:
    raise InputError(config.data_dir, f"{manifest.num_examples} examples cannot fill a batch "
                     f"of {config.batch_size} on each of {process_count} processes",
                     "lower batch_size or build more examples")
  ds = grain.MapDataset.source(grain.sources.ArrayRecordDataSource(paths))
  if config.shuffle:
    ds = ds.shuffle(seed=config.seed)
  ds = ds.repeat(config.num_epochs or None)
  per_process = len(ds) // process_count
  ds = ds[process_index:per_process * process_count:process_count]
  ds = ds.batch(config.batch_size, drop_remainder=True, batch_fn=list)
  return ds.map_with_index(AssembleBatch(settings)), manifest


def _fingerprint(config: ml_collections.ConfigDict, process_index: int, process_count: int):
  """Identifies the stream a state belongs to, so a mismatched restore fails loudly."""
  keys = ("batch_size", "image_fraction", "image_batch_size", "seed", "shuffle", "num_epochs",
          "structure_fidelity_min", "structure_fidelity_max", "use_latents")
  stream = {k: config[k] for k in keys} | {"process": [process_index, process_count]}
  if config.image_buckets:  # only when set: states saved before buckets existed keep their fingerprint
    stream["image_buckets"] = [list(bucket) for bucket in config.image_buckets]
  return hashlib.sha256(json.dumps(stream, sort_keys=True).encode()).hexdigest()[:16]


class Loader:
  """An iterator of batch dicts with checkpointable state (see the module docstring).

  Args:
    config: `default_loader_config()` with data_dir set (and tokenizer_dir for caption tokens).
    process_index, process_count: this process's place among the data-loading processes;
      default `jax.process_index()` and `jax.process_count()`.
  """

  def __init__(self, config: ml_collections.ConfigDict, *, process_index: int | None = None,
               process_count: int | None = None):
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
      raise ConfigError("process_index", f"{process_index} not in [0, {process_count})",
                        "pass 0 <= process_index < process_count")
    self.dataset, self.manifest = batch_dataset(config, process_index, process_count)
    self._fingerprint = _fingerprint(config, process_index, process_count)
    stream = self.dataset.to_iter_dataset(grain.ReadOptions(
        num_threads=config.read_threads, prefetch_buffer_size=config.prefetch_batches))
    if config.worker_count > 0:
      _mark_flags_parsed()
      stream = stream.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=config.worker_count, per_worker_buffer_size=config.worker_buffer_size))
    self._iterator = iter(stream)
    self._from_workers = config.worker_count > 0

  def __iter__(self) -> Loader:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iterator)
    if self._from_workers:
      # Workers hand over shared-memory arrays; copies free that memory as soon as we return.
      batch = {name: np.array(value) for name, value in batch.items()}
    return batch

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable position in the stream."""
    return {"stream": self._fingerprint, "grain": self._iterator.get_state()}

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Continues from a `get_state()` of a loader with the same data settings."""
    if state.get("stream") != self._fingerprint:
      raise ConfigError("data iterator state", "saved by a loader with other data settings "
                        "or another process layout", "restore with the config it was saved with")
    self._iterator.set_state(state["grain"])

  def close(self) -> None:
    """Stops worker processes, if any."""
    close = getattr(self._iterator, "close", None)
    if close is not None:
      close()


def _mark_flags_parsed() -> None:
  """Grain reads absl flags when it starts workers; under pytest or a plain script none parsed."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
