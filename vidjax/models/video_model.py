"""VideoDiffusionModel: the UNet, VAE and content encoder bound into one latent video diffusion model.

Training, editing and evaluation all go through this class, so each conditioning path exists once:
  structure 'depth'        1 depth channel resized to the latent and min-max normalised, as
                           SD-2-depth and Make-Your-Video (UNet in_channels = latent + 1);
  structure 'depth_pixels' 'depth' plus the depth map's pixels: each latent cell also gets its f x f
                           pixels of depth (space-to-depth, per-frame min-max), so silhouettes are
                           known to the pixel, not to the latent cell (in_channels = latent + 1 +
                           f^2). A 'depth' model widens to it by `widen_input_channels`, outputs
                           unchanged until training uses the new channels;
  structure 'depth_latent' the depth map encoded by the VAE plus the four sinusoidal t_s channels,
                           as Gen-1 (in_channels = 2 * latent + 4);
  structure 'none'         no structure input;
  content 'text'           caption token ids -> CLIP text tower -> (B, L, D) tokens;
  content 'image'          a CLIP image embedding (B, D) -> one (B, 1, D) token (Gen-1), which the
                           UNet expands to K tokens when `unet.image_context_tokens` = K > 0; in training
                           the frozen CLIP vision tower embeds a random frame of each clip, preprocessed
                           as the pipeline's content image (`clip.preprocess_levels`).
Params are one dict {'unet': ..., 'vae': ..., 'text_encoder': ...}; which parts train is the
trainer's business (optax masks by path).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vidjax import diffusion
from vidjax.conditioning.structure import normalize_depth, structure_fidelity_channels
from vidjax.errors import ConfigError, InputError
from vidjax.models.clip import (CLIPTextConfig, CLIPTextTransformer, CLIPVisionConfig, CLIPVisionTransformer,
                               random_frame_pixels)
from vidjax.models.depth import normalize_depth_for_unet
from vidjax.models.unet import UNetConfig, VideoUNet, init_inputs
from vidjax.models.vae import AutoencoderKL, VAEConfig, decode_video, encode_video

STRUCTURE_KINDS = ("none", "depth", "depth_pixels", "depth_latent")
CONTENT_KINDS = ("text", "image")
# How `encode_structure` min-max normalises depth, per structure: the manifest's
# conditioning.depth_normalization (written by the export, checked by the pipeline's loader).
DEPTH_NORMALIZATION = {"none": None, "depth": "per_frame_minmax", "depth_pixels": "per_frame_minmax",
                       "depth_latent": "per_clip_minmax"}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The whole latent video diffusion model."""

  unet: UNetConfig
  vae: VAEConfig
  text_encoder: CLIPTextConfig | None = None  # for content 'text'
  image_encoder: CLIPVisionConfig | None = None  # for content 'image' (Gen-1)
  structure: str = "depth"
  content: str = "text"
  null_tokens: tuple[int, ...] = ()  # token ids of the empty prompt (the unconditional content)
  prediction_type: str = "v_prediction"
  beta_schedule: str = "scaled_linear"
  beta_start: float = 0.00085
  beta_end: float = 0.012
  num_train_timesteps: int = 1000

  def __post_init__(self):
    if self.structure not in STRUCTURE_KINDS or self.content not in CONTENT_KINDS:
      raise ConfigError("ModelConfig", f"structure {self.structure!r} / content {self.content!r} unknown",
                        f"use structure in {STRUCTURE_KINDS} and content in {CONTENT_KINDS}")
    expected = self.vae.latent_channels + self.structure_channels
    if self.unet.in_channels != expected:
      raise ConfigError("ModelConfig.unet.in_channels", f"{self.unet.in_channels}, but {self.vae.latent_channels} "
                        f"latent + {self.structure_channels} structure channels ({self.structure!r}) = {expected}",
                        f"set unet.in_channels = {expected}, or widen the input by surgery")
    if self.content == "text" and (self.text_encoder is None or not self.null_tokens):
      raise ConfigError("ModelConfig", "content 'text' needs text_encoder and null_tokens",
                        "give the text tower's config and the tokenizer's ids for the empty prompt")
    if self.content == "image" and (self.image_encoder is None
                                    or self.image_encoder.projection_dim != self.unet.context_input_dim):
      raise ConfigError("ModelConfig", "content 'image' needs an image_encoder projecting to the UNet's context "
                        f"input width {self.unet.context_input_dim}",
                        "give the CLIP vision tower's config with projection_dim = unet.cross_attention_dim, or, "
                        "with unet.image_context_tokens, set unet.encoder_hid_dim to its projection_dim")
    for knob in ("image_context_tokens", "image_time_embedding"):
      if self.content == "text" and getattr(self.unet, knob):
        raise ConfigError(f"ModelConfig.unet.{knob}", "reads an image embedding, but content is 'text'",
                          f"turn unet.{knob} off for a text-conditioned model")

  @property
  def size_multiple(self) -> int:
    """Frame sides must be multiples of this: the VAE factor times the UNet's downsampling."""
    return size_multiple(self.vae, self.unet)

  @property
  def structure_channels(self) -> int:
    return {"none": 0, "depth": 1, "depth_pixels": 1 + self.vae.downsample_factor**2,
            "depth_latent": self.vae.latent_channels + 4}[self.structure]


def size_multiple(vae: VAEConfig, unet: UNetConfig) -> int:
  """The VAE factor times the UNet's downsampling: frame sides the model takes are multiples of it."""
  return vae.downsample_factor * 2 ** (len(unet.block_out_channels) - 1)


class VideoDiffusionModel:
  """Stateless functions of (params, inputs) for the model a `ModelConfig` describes."""

  def __init__(self, config: ModelConfig):
    self.config = config
    self.unet = VideoUNet(config.unet)
    self.vae = AutoencoderKL(config.vae)
    self.text_encoder = CLIPTextTransformer(config.text_encoder) if config.text_encoder else None
    self.image_encoder = CLIPVisionTransformer(config.image_encoder) if config.image_encoder else None
    self.schedule = diffusion.make_schedule(config.beta_schedule, config.num_train_timesteps, config.beta_start,
                                            config.beta_end)

  def init(self, rng: jax.Array) -> dict[str, Any]:
    """Boxed params (with logical axis names) of every component; run under jit or eval_shape."""
    keys = jax.random.split(rng, 4)
    params = {"unet": self.unet.init(keys[0], **init_inputs(self.config.unet, frames=2))["params"],
              "vae": self.vae.init(keys[1], jnp.zeros((1, 16, 16, self.config.vae.in_channels)))["params"]}
    if self.text_encoder is not None:
      params["text_encoder"] = self.text_encoder.init(keys[2], self.null_tokens(1))["params"]
    if self.image_encoder is not None:
      size = self.config.image_encoder.image_size
      params["image_encoder"] = self.image_encoder.init(keys[3], jnp.zeros((1, size, size, 3)))["params"]
    return params

  def null_tokens(self, batch: int) -> jax.Array:
    """(batch, L) ids of the empty prompt."""
    return jnp.broadcast_to(jnp.asarray(self.config.null_tokens, jnp.int32), (batch, len(self.config.null_tokens)))

  def encode_content(self, params: Mapping[str, Any], *, tokens: jax.Array | None = None,
                     image_embeds: jax.Array | None = None) -> jax.Array:
    """Content tokens for cross-attention: (B, L, D) from tokens (B, L), or (B, 1, D) from image_embeds (B, D)."""
    if self.config.content == "text":
      if tokens is None:
        raise InputError("tokens", "missing for a text-conditioned model", "pass caption token ids")
      return self.text_encoder.apply({"params": params["text_encoder"]}, tokens)["last_hidden_state"]
    if image_embeds is None:
      raise InputError("image_embeds", "missing for an image-conditioned model", "pass CLIP image embeddings")
    return image_embeds[:, None, :]

  def embed_frames(self, params: Mapping[str, Any], frames: jax.Array, rng: jax.Array) -> jax.Array:
    """CLIP image embeddings (B, D) of one random frame per clip; frames (B, T, H, W, 3) in [-1, 1].

    The frame goes through the one CLIP preprocessing (`clip.preprocess_levels`: short side, centre
    crop), as the edit pipeline's content image does, at the grey levels the loader's frames came from.
    """
    pixels = random_frame_pixels(frames, rng, self.config.image_encoder.image_size)
    return self.image_encoder.apply({"params": params["image_encoder"]}, pixels)["image_embeds"]

  def null_content(self, params: Mapping[str, Any], batch: int) -> jax.Array:
    """The unconditional content: the empty prompt's tokens, or a zero image embedding."""
    if self.config.content == "text":
      return self.encode_content(params, tokens=self.null_tokens(batch))
    return jnp.zeros((batch, 1, self.config.unet.context_input_dim), jnp.float32)

  def encode_frames(self, params: Mapping[str, Any], frames: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """(B, T, H, W, 3) in [-1, 1] -> scaled latents (B, T, H/f, W/f, C)."""
    return encode_video(self.vae, params["vae"], frames, rng)

  def decode(self, params: Mapping[str, Any], latents: jax.Array) -> jax.Array:
    """Scaled latents -> (B, T, H, W, 3) float32, unclipped."""
    return decode_video(self.vae, params["vae"], latents)

  def encode_structure(self, params: Mapping[str, Any], depth: jax.Array, structure_fidelity: jax.Array,
                       latent_hw: tuple[int, int]) -> jax.Array | None:
    """Structure channels for the UNet.

    Depth is normalised here and nowhere else on its way to the UNet: per frame for 'depth' and
    'depth_pixels' (SD-2-depth's min-max, after the resize to the latent), per sample over all its
    frames for 'depth_latent' (the VAE reads [-1, 1]; one range for the clip keeps it consistent in time).

    Args:
      depth: (B, T, H, W, 1), already blurred to its t_s (the loader or the pipeline does it), any
        range (inverse depth: large = near).
      structure_fidelity: (B,) the paper's t_s (used by 'depth_latent' only).
      latent_hw: the latent (h, w).
    Returns:
      (B, T, h, w, structure_channels), or None for structure 'none'.
    """
    kind = self.config.structure
    if kind == "none":
      return None
    b, t, h, w, _ = depth.shape
    if kind in ("depth", "depth_pixels"):
      frames = depth[..., 0].reshape(b * t, h, w)
      coarse = normalize_depth_for_unet(frames, latent_hw).reshape(b, t, *latent_hw, 1)
      if kind == "depth":
        return coarse
      (lh, lw), f = latent_hw, self.config.vae.downsample_factor
      if (h, w) != (lh * f, lw * f):
        raise InputError("depth", f"{h}x{w} is not the latent {lh}x{lw} times the VAE factor {f}",
                         f"give depth at the frames' size, a multiple of {f}")
      cells = normalize_depth(frames).reshape(b, t, lh, f, lw, f).transpose(0, 1, 2, 4, 3, 5)
      return jnp.concatenate([coarse, cells.reshape(b, t, lh, lw, f * f)], axis=-1)
    latents = encode_video(self.vae, params["vae"], jnp.repeat(normalize_depth(depth), 3, axis=-1))
    ts = structure_fidelity_channels(jnp.asarray(structure_fidelity, jnp.float32), *latent_hw)
    return jnp.concatenate([latents, jnp.broadcast_to(ts[:, None], (b, t, *latent_hw, 4))], axis=-1)


def param_count(params: Mapping[str, Any]) -> dict[str, int]:
  return {k: int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(v))) for k, v in params.items()}
