"""Per-item features the metrics read (`vidjax.eval.metrics`), each from one model run at the protocol's input.

Each function maps videos to a dict {feature name: array with one row per video}, the unit a job caches
per item and stacks for the metrics:

  'i3d_logits' (N, 400), 'i3d_pooled' (N, 1024)   I3D on `i3d.preprocess_videos` clips (16 frames, 224)
  'clip_frames' (N, T, D)                         CLIP image embeddings of every frame
  'clip_text' (N, D)                              CLIP text embedding of each item's prompt
  'depth' (N, T, H, W)                            relative inverse depth of every frame (a DPT estimator)

Data parallel within a process: pass `mesh=data_mesh()` (every local device on one 'data' axis) and
the I3D and CLIP image features run in batches split over the mesh's devices (params replicated, the
batch's leading axis sharded), so 8 devices compute the figures 1 device computes, 8 clips at a time.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

import jax
from jax.sharding import NamedSharding, PartitionSpec

from vidjax.errors import ConfigError, InputError
from vidjax.models import clip, i3d
from vidjax.parallel import make_mesh

Features = dict[str, np.ndarray]


def data_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A mesh over this process's first `num_devices` local devices (0: all of them), all on the 'data' axis.

  Local, not global: in a multi-process job each process scores its own slice of the items
  (`vidjax.eval.job.process_slice`), so its feature batches never cross hosts.
  """
  local = jax.local_devices()
  if not 0 <= num_devices <= len(local):
    raise ConfigError("num_devices", f"{num_devices} is outside 0..{len(local)} (this process's devices)",
                      "use 0 for every local device, or a count up to the local device count")
  return make_mesh({"data": -1}, devices=local[:num_devices or len(local)])


def _sharded_map(fn: Callable[[Any, jax.Array], Mapping[str, jax.Array]], params: Any, inputs: np.ndarray,
                 batch_size: int, mesh: jax.sharding.Mesh | None) -> dict[str, np.ndarray]:
  """fn(params, batch) over `inputs` (N, ...) in batches, each split over the mesh's devices -> {name: (N, ...)}.

  The batch size is rounded up to a multiple of the device count; the last batch is padded by
  repeating the last input (one compile) and the padding dropped from the outputs.
  """
  count = len(inputs)
  devices = 1 if mesh is None else mesh.devices.size
  # A multiple of the device count, and no larger than the inputs need (a few items compile a small batch).
  batch_size = -(-min(batch_size, count) // devices) * devices
  if mesh is not None:
    batch_sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names))  # leading axis over every mesh axis
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
  padded = np.concatenate([inputs, np.repeat(inputs[-1:], -count % batch_size, axis=0)])
  outputs: dict[str, list[np.ndarray]] = {}
  for start in range(0, len(padded), batch_size):
    batch = padded[start:start + batch_size]
    if mesh is not None:
      batch = jax.device_put(batch, batch_sharding)
    for name, value in fn(params, batch).items():
      outputs.setdefault(name, []).append(np.asarray(value))
  return {name: np.concatenate(parts)[:count] for name, parts in outputs.items()}


def i3d_video_features(config: i3d.I3DConfig, params: Mapping[str, Any], videos: np.ndarray, *,
                       num_frames: int = i3d.PROTOCOL_FRAMES, size: int = i3d.PROTOCOL_SIZE,
                       batch_size: int = 8, mesh: jax.sharding.Mesh | None = None) -> Features:
  """uint8 (N, T, H, W, 3) videos -> {'i3d_logits': (N, classes), 'i3d_pooled': (N, 1024)} float32.

  Clips go through `preprocess_videos` (first `num_frames` frames, `size` x `size`, [-1, 1]) and the
  jitted I3D in batches of `batch_size` (rounded up to a multiple of the mesh's devices, each batch
  split over them), the last one padded by repeating the last clip (one compile).
  """
  videos = np.asarray(videos)
  if videos.ndim != 5 or not len(videos):
    raise InputError("videos", f"shape {videos.shape}", "pass a non-empty uint8 (N, T, H, W, 3) array")
  clips = videos[:, :num_frames]  # resized and scaled per batch, on the sharded clips (short ones are refused)

  def run(p, batch):
    out = i3d.i3d_features(config, p, i3d.preprocess_videos(batch, num_frames, size))
    return {"i3d_logits": out["logits"], "i3d_pooled": out["pooled"]}

  return _sharded_map(run, params, clips, batch_size, mesh)


def clip_frame_features(config: clip.CLIPVisionConfig, params: Mapping[str, Any], videos: Sequence[np.ndarray], *,
                        batch_size: int = 32, mesh: jax.sharding.Mesh | None = None) -> Features:
  """uint8 videos, each (T, H, W, 3) with one shape for all -> {'clip_frames': (N, T, D)} projected image embeddings.

  Frames are preprocessed as CLIP's image processor (`clip.preprocess_images`, short side to the model's
  size, centre crop); all the videos' frames run through the image tower in batches of `batch_size`
  frames split over the mesh's devices; the metrics normalise the embeddings.
  """
  if config.projection_dim is None:
    raise InputError("CLIP vision tower", "has no visual_projection",
                     "load a CLIPVisionModelWithProjection or CLIPModel")
  frames = np.stack([np.asarray(v) for v in videos])  # (N, T, H, W, 3)
  n, t = frames.shape[:2]

  def run(p, batch):
    pixels = clip.preprocess_images(batch, config.image_size)
    return {"clip_frames": clip.encode_image(config, p, pixels)["image_embeds"]}

  embeds = _sharded_map(run, params, frames.reshape(n * t, *frames.shape[2:]), batch_size, mesh)["clip_frames"]
  return {"clip_frames": embeds.reshape(n, t, -1)}


def clip_text_features(config: clip.CLIPTextConfig, params: Mapping[str, Any], tokenizer: clip.ClipTokenizer,
                       prompts: Sequence[str]) -> Features:
  """Prompts -> {'clip_text': (N, D)} projected CLIP text embeddings (the tower paired with the image tower)."""
  if config.projection_dim is None:
    raise InputError("CLIP text tower", "has no text_projection", "load a CLIPTextModelWithProjection or CLIPModel")
  return {"clip_text": np.asarray(clip.encode_text(config, params, tokenizer(list(prompts)))["text_embeds"])}


def depth_features(estimate: Callable[[np.ndarray], np.ndarray], videos: Sequence[np.ndarray]) -> Features:
  """uint8 videos (T, H, W, 3), one shape for all -> {'depth': (N, T, H, W)} float32.

  `estimate` is a depth model on one clip, e.g. `DepthEstimator.inverse_depth` (relative inverse depth;
  the depth metrics are invariant to each frame's scale and shift, so no normalisation is needed).
  """
  return {"depth": np.stack([np.asarray(estimate(np.asarray(v)), np.float32) for v in videos])}
