"""Per-item features the metrics read (`vidjax.eval.metrics`), each from one model run at the protocol's input.

Each function maps videos to a dict {feature name: array with one row per video}, the unit a job caches
per item and stacks for the metrics:

  'i3d_logits' (N, 400), 'i3d_pooled' (N, 1024)   I3D on `i3d.preprocess_videos` clips (16 frames, 224)
  'clip_frames' (N, T, D)                         CLIP image embeddings of every frame
  'clip_text' (N, D)                              CLIP text embedding of each item's prompt
  'depth' (N, T, H, W)                            relative inverse depth of every frame (a DPT estimator)
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from vidjax.errors import InputError
from vidjax.models import clip, i3d

Features = dict[str, np.ndarray]


def i3d_video_features(config: i3d.I3DConfig, params: Mapping[str, Any], videos: np.ndarray, *,
                       num_frames: int = i3d.PROTOCOL_FRAMES, size: int = i3d.PROTOCOL_SIZE,
                       batch_size: int = 8) -> Features:
  """uint8 (N, T, H, W, 3) videos -> {'i3d_logits': (N, classes), 'i3d_pooled': (N, 1024)} float32.

  Clips go through `preprocess_videos` (first `num_frames` frames, `size` x `size`, [-1, 1]) and the
  jitted I3D in batches of `batch_size`, the last one padded by repeating the last clip (one compile).
  """
  videos = np.asarray(videos)
  if videos.ndim != 5 or not len(videos):
    raise InputError("videos", f"shape {videos.shape}", "pass a non-empty uint8 (N, T, H, W, 3) array")
  count = len(videos)
  padded = np.concatenate([videos, np.repeat(videos[-1:], -count % batch_size, axis=0)])
  logits, pooled = [], []
  for start in range(0, len(padded), batch_size):
    out = i3d.i3d_features(config, params, i3d.preprocess_videos(padded[start:start + batch_size], num_frames, size))
    logits.append(np.asarray(out["logits"]))
    pooled.append(np.asarray(out["pooled"]))
  return {"i3d_logits": np.concatenate(logits)[:count], "i3d_pooled": np.concatenate(pooled)[:count]}


def clip_frame_features(config: clip.CLIPVisionConfig, params: Mapping[str, Any], videos: Sequence[np.ndarray],
                        ) -> Features:
  """uint8 videos, each (T, H, W, 3) with one T for all -> {'clip_frames': (N, T, D)} projected image embeddings.

  Frames are preprocessed as CLIP's image processor (`clip.preprocess_images`, short side to the model's
  size, centre crop); the metrics normalise the embeddings.
  """
  if config.projection_dim is None:
    raise InputError("CLIP vision tower", "has no visual_projection",
                     "load a CLIPVisionModelWithProjection or CLIPModel")
  embeddings = []
  for video in videos:
    pixels = clip.preprocess_images(np.asarray(video), config.image_size)
    embeddings.append(np.asarray(clip.encode_image(config, params, pixels)["image_embeds"]))
  return {"clip_frames": np.stack(embeddings)}


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
