"""VideoUNet: the SD-2-family UNet with both papers' temporal layers, in linen.

Image mode computes exactly what diffusers' UNet2DConditionModel computes (tested to 1e-4);
module names mirror diffusers' state-dict keys (down_blocks_0/resnets_1/conv1, ...), so the
converter needs no per-layer table. Temporal layers (see `temporal.py`) are added per config:
  Gen-1:            temporal_conv='conv1d', temporal_attention=True, temporal_max_frames=8
  Make-Your-Video:  temporal_conv='pseudo3d', temporal_attention=True, temporal_relative_position=16,
                    temporal_causal=True (the window L_M is a call argument, not a weight)
Inputs are channels-last videos (B, T, h, w, C), and so are the activations between blocks: every
spatial layer (conv_in/out, the res blocks' convs and norms, spatial transformers, down/upsamplers)
runs per frame under `nn.vmap` over T with shared parameters (`layers.per_frame`), so image mode
(temporal layers skipped) and video mode share every weight by construction; temporal layers act
along T between them.
Structure (depth latents + t_s channels, or 1-channel depth) is concatenated to the latent, so
`in_channels` = latent channels + structure channels.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vidjax.errors import ConfigError
from vidjax.models import layers
from vidjax.models.attention import FeedForward, SpatialTransformer
from vidjax.models.resnet import TEMPORAL_CONV_KINDS, ResnetBlock
from vidjax.models.temporal import TemporalInfo, TemporalTransformer

ACTIVATION_AXES = ("batch", "height", "width", "embed")  # the B*T frames of (B, T, h, w, C) activations as images


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Architecture of a VideoUNet. Defaults are Stable Diffusion 2 depth (image mode)."""

  in_channels: int = 5
  out_channels: int = 4
  block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
  layers_per_block: int = 2
  attention_levels: tuple[bool, ...] = (True, True, True, False)  # CrossAttn blocks per level
  num_attention_heads: tuple[int, ...] = (5, 10, 20, 20)  # per level (diffusers' `attention_head_dim` for SD-2)
  cross_attention_dim: int = 1024
  # 0: the context goes to cross-attention as given (text tokens, or Gen-1's one image-embedding token,
  # where softmax over a single key makes every position read the same value). K > 0: the context is
  # one image embedding (B, 1, cross_attention_dim), expanded to K tokens first by `encoder_hid_proj`
  # (diffusers' ImageProjection, as IP-Adapter and Kandinsky: Linear to K * D, then LayerNorm), so
  # positions can attend to different tokens.
  image_context_tokens: int = 0
  # With image_context_tokens: the image embedding's width E, when it differs from cross_attention_dim
  # (diffusers' encoder_hid_dim; 0: the same); `encoder_hid_proj` maps it to the context's width.
  encoder_hid_dim: int = 0
  # 0: `encoder_hid_proj` is that linear ImageProjection. m > 0: an MLP instead (diffusers'
  # IPAdapterFaceIDImageProjection: Linear E -> m * E, exact GELU, Linear to K * D, then LayerNorm). The
  # linear map underfits a text context (which token holds which object's colour depends on the whole
  # scene): on the toy world the MLP fits it with held-out R^2 0.701, the linear map 0.566, and scores
  # more objects in the right colour (configs/toy_gen1.py).
  image_projection_mult: int = 0
  # True: the image embedding (B, 1, cross_attention_dim) also enters the time embedding, through an
  # MLP added to it (diffusers' class_embed_type='projection', its `class_embedding` names; unCLIP's
  # decoder does the same), so every res block gets the content as a scale and shift, not only the
  # cross-attention. Its last layer starts at zero: a model widened by `init_from` starts unchanged.
  image_time_embedding: bool = False
  transformer_depth: int = 1
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  flip_sin_to_cos: bool = True
  freq_shift: float = 0.0
  temporal_conv: str = "none"  # 'none' | 'conv1d' (Gen-1) | 'pseudo3d' (Make-Your-Video)
  temporal_attention: bool = False
  temporal_relative_position: int = 0  # Make-Your-Video: 16
  temporal_max_frames: int = 0  # learned frame-index embeddings (Gen-1); 0 = none
  temporal_causal: bool = False  # Make-Your-Video's causal attention mask
  attention_backend: str = "xla"  # spatial attention: 'xla' or 'cudnn'; temporal attention always 'xla'
  remat: bool = False  # rematerialise each down/mid/up block in the backward pass
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"  # storage dtype

  def __post_init__(self):
    levels = len(self.block_out_channels)
    if len(self.attention_levels) != levels or len(self.num_attention_heads) != levels:
      raise ConfigError("UNetConfig", "attention_levels and num_attention_heads need one entry per level",
                        f"give {levels} entries each")
    if self.temporal_conv not in TEMPORAL_CONV_KINDS:
      raise ConfigError("UNetConfig.temporal_conv", f"unknown kind {self.temporal_conv!r}",
                        f"use one of {TEMPORAL_CONV_KINDS}")
    for c, heads in zip(self.block_out_channels, self.num_attention_heads):
      if c % self.norm_num_groups or c % heads:
        raise ConfigError("UNetConfig", f"{c} channels do not divide into {self.norm_num_groups} groups / {heads} heads",
                          "choose channels divisible by norm_num_groups and by the level's head count")
    if self.image_projection_mult and not self.image_context_tokens:
      raise ConfigError("UNetConfig.image_projection_mult", f"{self.image_projection_mult}, but image_context_tokens "
                        "is 0: there is no image projection", "set image_context_tokens, or image_projection_mult to 0")
    if self.encoder_hid_dim and not self.image_context_tokens:
      raise ConfigError("UNetConfig.encoder_hid_dim", f"{self.encoder_hid_dim}, but image_context_tokens is 0: the "
                        "context enters cross-attention as given", "set image_context_tokens, or encoder_hid_dim to 0")

  @property
  def context_input_dim(self) -> int:
    """The width of the context the UNet takes: the image embedding's (encoder_hid_dim) or cross_attention_dim."""
    return self.encoder_hid_dim or self.cross_attention_dim

  @property
  def has_temporal(self) -> bool:
    return self.temporal_conv != "none" or self.temporal_attention

  @classmethod
  def from_diffusers(cls, config: dict[str, Any], **overrides) -> "UNetConfig":
    """From a diffusers UNet2DConditionModel config.json dict (SD-1/2 families)."""
    levels = len(config["block_out_channels"])
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    heads = tuple(heads) if isinstance(heads, (list, tuple)) else (heads,) * levels
    unsupported = {k: config.get(k) for k in ("class_embed_type", "addition_embed_type") if config.get(k) is not None}
    if (config.get("class_embed_type") == "projection"
        and config.get("projection_class_embeddings_input_dim") == config["cross_attention_dim"]):
      del unsupported["class_embed_type"]  # class labels of the context's width: read as the image embedding
      overrides = {"image_time_embedding": True, **overrides}
    # With image_proj, encoder_hid_dim is the image embedding's width; without a type, diffusers projects
    # text of another width (text_proj), which this port lacks.
    if config.get("encoder_hid_dim_type") not in (None, "image_proj") or (
        config.get("encoder_hid_dim_type") is None and config.get("encoder_hid_dim") not in (None, config["cross_attention_dim"])):
      unsupported.update({k: config.get(k) for k in ("encoder_hid_dim_type", "encoder_hid_dim")})
    if config.get("encoder_hid_dim_type") == "image_proj":
      # diffusers builds ImageProjection with its default 32 tokens, from encoder_hid_dim wide embeddings.
      hid_dim = config.get("encoder_hid_dim")
      overrides = {"image_context_tokens": 32,
                   "encoder_hid_dim": 0 if hid_dim in (None, config["cross_attention_dim"]) else hid_dim, **overrides}
    unsupported.update({k: config[k] for k in ("resnet_time_scale_shift",) if config.get(k, "default") != "default"})
    if unsupported or config.get("transformer_layers_per_block", 1) not in (1, [1] * levels):
      raise ConfigError("UNet config.json", f"unsupported settings {unsupported or 'transformer_layers_per_block'}",
                        "vidjax ports the SD-1/SD-2 UNet family")
    return cls(in_channels=config["in_channels"], out_channels=config["out_channels"],
               block_out_channels=tuple(config["block_out_channels"]), layers_per_block=config["layers_per_block"],
               attention_levels=tuple(t.startswith("CrossAttn") for t in config["down_block_types"]),
               num_attention_heads=heads, cross_attention_dim=config["cross_attention_dim"],
               norm_num_groups=config.get("norm_num_groups", 32), norm_eps=config.get("norm_eps", 1e-5),
               flip_sin_to_cos=config.get("flip_sin_to_cos", True), freq_shift=config.get("freq_shift", 0),
               **overrides)


class _Level(nn.Module):
  """Shared pieces of down/mid/up blocks on (B, T, h, w, C) videos: res blocks and attention."""

  config: UNetConfig
  level: int

  def kw(self):
    return dict(dtype=jnp.dtype(self.config.dtype), param_dtype=jnp.dtype(self.config.param_dtype))

  def resnet(self, x, temb, temporal, channels, name):
    c = self.config
    return ResnetBlock(out_channels=channels, num_groups=c.norm_num_groups, epsilon=c.norm_eps,
                       temporal_conv=c.temporal_conv, name=name, **self.kw())(x, temb, temporal)

  def attend(self, x, context, temporal, index):
    """Spatial transformer per frame (cross-attention to `context`), then temporal attention along T."""
    c = self.config
    heads = c.num_attention_heads[self.level]
    head_dim = x.shape[-1] // heads

    def spatial(level, frames, tokens):
      return SpatialTransformer(heads=heads, head_dim=head_dim, depth=c.transformer_depth, num_groups=c.norm_num_groups,
                                backend=c.attention_backend, name=f"attentions_{index}", **level.kw())(frames, tokens)

    x = layers.per_frame(spatial, self, x, shared=(context,))
    if c.temporal_attention:
      temporal_block = TemporalTransformer(
          heads=heads, head_dim=head_dim, depth=c.transformer_depth, num_groups=c.norm_num_groups,
          relative_position=c.temporal_relative_position, max_frames=c.temporal_max_frames, causal=c.temporal_causal,
          name=f"temporal_attentions_{index}", **self.kw())
      x = temporal.residual(x, lambda v: temporal_block(v, window=temporal.window))
    return _constrain(x)


def _constrain(x: jax.Array) -> jax.Array:
  """Shards (B, T, h, w, C) activations as the B * T images the spatial layers see (a free reshape).

  Splitting the images, not only the videos, over the batch axes also shards when B alone does not divide them.
  """
  return nn.with_logical_constraint(x.reshape((-1,) + x.shape[2:]), ACTIVATION_AXES).reshape(x.shape)


class DownBlock(_Level):
  """layers_per_block x (res [+ attention]) then a stride-2 conv (except the last level)."""

  @nn.compact
  def __call__(self, x, temb, context, temporal):
    c = self.config
    skips = []
    for j in range(c.layers_per_block):
      x = self.resnet(x, temb, temporal, c.block_out_channels[self.level], f"resnets_{j}")
      if c.attention_levels[self.level]:
        x = self.attend(x, context, temporal, j)
      skips.append(x)
    if self.level < len(c.block_out_channels) - 1:
      downsample = lambda level, frames: layers.Downsample(features=frames.shape[-1], name="downsamplers_0",
                                                           **level.kw())(frames)
      x = layers.per_frame(downsample, self, x)
      skips.append(x)
    return x, tuple(skips)


class MidBlock(_Level):
  """res, attention (+ temporal attention), res at the lowest resolution."""

  @nn.compact
  def __call__(self, x, temb, context, temporal):
    x = self.resnet(x, temb, temporal, x.shape[-1], "resnets_0")
    x = self.attend(x, context, temporal, 0)
    return self.resnet(x, temb, temporal, x.shape[-1], "resnets_1")


class UpBlock(_Level):
  """(layers_per_block + 1) x (concat skip, res [+ attention]) then a 2x upsample (except the last)."""

  @nn.compact
  def __call__(self, x, skips, temb, context, temporal, upsample_like):
    c = self.config
    for j, skip in enumerate(reversed(skips)):
      x = self.resnet(jnp.concatenate([x, skip], axis=-1), temb, temporal, c.block_out_channels[self.level],
                      f"resnets_{j}")
      if c.attention_levels[self.level]:
        x = self.attend(x, context, temporal, j)
    if upsample_like is not None:
      size = upsample_like.shape[2:4]
      upsample = lambda level, frames: layers.Upsample(features=frames.shape[-1], name="upsamplers_0",
                                                       **level.kw())(frames, size)
      x = layers.per_frame(upsample, self, x)
    return x


def _maybe_remat(cls, remat: bool):
  return nn.remat(cls) if remat else cls


class VideoUNet(nn.Module):
  """Predicts eps or v for latent videos; see the module docstring."""

  config: UNetConfig

  @nn.compact
  def __call__(self, latents: jax.Array, timesteps: jax.Array, context: jax.Array,
               structure: jax.Array | None = None, *, video_gate: jax.Array | None = None,
               temporal_window: jax.Array | int | None = None, image_mode: bool = False) -> jax.Array:
    """Denoiser forward pass.

    Args:
      latents: (B, T, h, w, C) noisy latents.
      timesteps: (B,) or () diffusion timesteps.
      context: (B, L, D) content tokens (text tokens, or one CLIP image embedding with L = 1, which
        `image_context_tokens` > 0 expands to (B, K, D)).
      structure: (B, T, h, w, Cs) channels concatenated to the latents, or None.
      video_gate: (B,) 1 = video mode, 0 = image mode per sample (temporal guidance in one call).
      temporal_window: causal receptive field L_M of temporal attention (needs temporal_causal).
      image_mode: skip all temporal layers (image batches in joint training; the image model).
    Returns:
      (B, T, h, w, out_channels) in float32.
    """
    c = self.config
    kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
    b = latents.shape[0]
    x = latents if structure is None else jnp.concatenate([latents, structure.astype(latents.dtype)], axis=-1)
    if x.shape[-1] != c.in_channels:
      raise ConfigError("UNet input", f"{x.shape[-1]} channels (latents + structure) but the model takes {c.in_channels}",
                        "pass the structure the model was trained with, or widen the input by surgery")
    temporal = TemporalInfo(gate=video_gate, window=temporal_window, enabled=c.has_temporal and not image_mode)
    timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (b,))
    temb = layers.timestep_embedding(timesteps, c.block_out_channels[0], flip_sin_to_cos=c.flip_sin_to_cos,
                                     downscale_freq_shift=c.freq_shift)
    temb = layers.TimestepMLP(4 * c.block_out_channels[0], name="time_embedding", **kw)(temb.astype(kw["dtype"]))
    context = context.astype(kw["dtype"])
    if c.image_time_embedding:
      temb = temb + layers.TimestepMLP(temb.shape[-1], zero_init_out=True, name="class_embedding",
                                       **kw)(_one_embedding(context, "image_time_embedding"))
    if c.image_context_tokens:
      context = ImageProjection(c.image_context_tokens, c.image_projection_mult, c.cross_attention_dim,
                                name="encoder_hid_proj", **kw)(context)

    x = _constrain(x.astype(kw["dtype"]))
    x = layers.per_frame(_conv_in, self, x)
    skips = [x]
    for level in range(len(c.block_out_channels)):
      x, level_skips = _maybe_remat(DownBlock, c.remat)(c, level, name=f"down_blocks_{level}")(x, temb, context, temporal)
      skips.extend(level_skips)
    x = _maybe_remat(MidBlock, c.remat)(c, len(c.block_out_channels) - 1, name="mid_block")(x, temb, context, temporal)

    # Up block i consumes layers_per_block + 1 skips, newest first; it upsamples to the size of the
    # next skip so that odd latent sizes (which the stride-2 convs round up) come back exactly.
    for i, level in enumerate(reversed(range(len(c.block_out_channels)))):
      level_skips = tuple(skips[-(c.layers_per_block + 1):])
      del skips[-(c.layers_per_block + 1):]
      upsample_like = skips[-1] if skips and level > 0 else None
      x = _maybe_remat(UpBlock, c.remat)(c, level, name=f"up_blocks_{i}")(
          x, level_skips, temb, context, temporal, upsample_like)
    return layers.per_frame(_conv_out, self, x).astype(jnp.float32)


class ImageProjection(nn.Module):
  """(B, 1, E) image embedding -> (B, K, D) context tokens, with diffusers' names: for mult 0 its
  ImageProjection (a Linear to K * D), for mult m > 0 its IPAdapterFaceIDImageProjection (`ff`, a 'gelu'
  FeedForward of hidden width m * E to K * D); then LayerNorm. D is `width` (the UNet's
  cross_attention_dim; None: E), so the embedding need not be as wide as the context."""

  num_tokens: int
  mult: int = 0
  width: int | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, context: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b = context.shape[0]
    d = self.width or context.shape[-1]
    embeds = _one_embedding(context, "image_context_tokens")
    if self.mult:
      tokens = FeedForward(self.mult, "gelu", self.num_tokens * d, name="ff", **kw)(embeds)
    else:
      tokens = layers.dense(self.num_tokens * d, name="image_embeds", **kw)(embeds)
    return layers.layer_norm(name="norm", **kw)(tokens.reshape(b, self.num_tokens, d))


def _one_embedding(context: jax.Array, knob: str) -> jax.Array:
  """(B, 1, D) -> (B, D); ConfigError naming `knob` for any other context (text tokens)."""
  if context.ndim != 3 or context.shape[1] != 1:
    raise ConfigError("UNet context", f"shape {context.shape}, but {knob} reads one image embedding",
                      f"pass (B, 1, D) image embeddings, or turn {knob} off")
  return context[:, 0]


# VideoUNet's per-frame stem and head on (N, h, w, C) images, building its layers inline.

def _conv_in(unet: VideoUNet, x: jax.Array) -> jax.Array:
  c = unet.config
  return layers.conv(c.block_out_channels[0], padding=((1, 1), (1, 1)), name="conv_in", dtype=jnp.dtype(c.dtype),
                     param_dtype=jnp.dtype(c.param_dtype))(x)


def _conv_out(unet: VideoUNet, x: jax.Array) -> jax.Array:
  c = unet.config
  kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
  x = nn.silu(layers.group_norm(c.norm_num_groups, c.norm_eps, name="conv_norm_out", **kw)(x))
  return layers.conv(c.out_channels, padding=((1, 1), (1, 1)), name="conv_out", **kw)(x)


def init_inputs(config: UNetConfig, *, batch: int = 1, frames: int = 1, height: int = 8, width: int = 8,
                context_length: int = 1) -> dict[str, jax.Array]:
  """Dummy inputs of the right shapes for `VideoUNet.init` (structure folded into latents)."""
  return dict(latents=jnp.zeros((batch, frames, height, width, config.in_channels), jnp.float32),
              timesteps=jnp.zeros((batch,), jnp.int32),
              context=jnp.zeros((batch, context_length, config.context_input_dim), jnp.float32))
