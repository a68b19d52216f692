"""The cached fields' encoders of `vidjax build-shards --vae_dir / --clip_dir` (BuildSpec.encode_fn, embed_fn).

  encode = VaeLatents("weights/sd-vae")      # a `vidjax convert vae` folder (a 'vae' component)
  embed = ClipEmbeddings("weights/clip-l14")  # a `vidjax convert clip` folder (an 'image_encoder' component)
  encode(frames uint8 (N, H, W, 3)) -> float32 (N, H/f, W/f, C): the scaled posterior means the trainer
      would compute (`vidjax.models.vae.encode_video` without sampling), so `data.use_latents` trains on them
  embed(frames uint8 (N, H, W, 3)) -> float32 (N, D): projected CLIP image embeddings, one per frame, after
      the one CLIP preprocessing (`vidjax.models.clip.preprocess_levels`)

Both are small frozen dataclasses (pickled to Beam and pool workers; their repr, with the folder, enters
the build's fingerprint) that load their model once per process, on its accelerator when JAX finds one.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vidjax.convert import pretrained
from vidjax.models import clip
from vidjax.models.vae import AutoencoderKL, encode_video
from vidjax.errors import InputError


def _component(folder: str, name: str):
  """(config, params on the default device) of one component of a converted folder."""
  config, params = pretrained.load_pretrained(folder, (name,))[name]
  return config, jax.device_put(params)


@functools.lru_cache(maxsize=2)
def _vae(folder: str) -> Callable[[np.ndarray], np.ndarray]:
  config, params = _component(folder, "vae")
  module = AutoencoderKL(config)
  return lambda frames: np.asarray(encode_video(module, params, jnp.asarray(frames, jnp.float32)[None] / 127.5 - 1.0)[0])


@functools.lru_cache(maxsize=2)
def _clip(folder: str) -> Callable[[np.ndarray], np.ndarray]:
  config, params = _component(folder, "image_encoder")
  if config.projection_dim is None:
    raise InputError(f"--clip_dir {folder}", "its CLIP image tower has no visual_projection",
                     "convert a CLIPModel or CLIPVisionModelWithProjection with `vidjax convert clip`")
  module = clip.CLIPVisionTransformer(config)

  @jax.jit
  def embed(levels):
    return module.apply({"params": params}, clip.preprocess_levels(levels, config.image_size))["image_embeds"]

  return lambda frames: np.asarray(embed(jnp.asarray(frames, jnp.float32)))


@dataclasses.dataclass(frozen=True)
class VaeLatents:
  """A converted VAE folder's latents of frames (see the module docstring)."""

  vae_dir: str

  def __call__(self, frames: np.ndarray) -> np.ndarray:
    return _vae(self.vae_dir)(frames)


@dataclasses.dataclass(frozen=True)
class ClipEmbeddings:
  """A converted CLIP image tower's embeddings of frames (see the module docstring)."""

  clip_dir: str

  def __call__(self, frames: np.ndarray) -> np.ndarray:
    return _clip(self.clip_dir)(frames)
