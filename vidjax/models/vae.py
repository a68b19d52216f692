"""The Stable-Diffusion-compatible AutoencoderKL, in linen, and its per-frame video helpers.

`AutoencoderKL` computes what diffusers' AutoencoderKL computes (tested to 1e-4 in float32) and
mirrors its state-dict keys (encoder/down_blocks_0/resnets_1/conv1, decoder/up_blocks_0/upsamplers_0/
conv, ...), so `vidjax.convert.diffusers_vae` needs only the generic mapping. Images are
channels-last (N, H, W, C) in [-1, 1]; videos (B, T, H, W, C) are encoded frame by frame
(`encode_video` / `decode_video`), which also apply the latent scaling the diffusion models expect.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vidjax.errors import ConfigError, InputError
from vidjax.models import layers
from vidjax.models.attention import Attention
from vidjax.models.resnet import ResnetBlock

Dtype = Any
EPSILON = 1e-6  # every VAE norm (resnets, mid attention, conv_norm_out)
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clip


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """Architecture and latent scaling of an AutoencoderKL. Defaults are Stable Diffusion 1/2's VAE."""

  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  scaling_factor: float = 0.18215
  shift_factor: float | None = None
  sample_size: int | tuple[int, ...] = 512
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True
  # A decoder wider or deeper than the encoder (as diffusers' AsymmetricAutoencoderKL): None = the
  # encoder's. Decoding is a small part of sampling, so a stronger decoder sharpens every output
  # for little cost, and it can be trained alone on a frozen encoder (latents stay as they were).
  decoder_block_out_channels: tuple[int, ...] | None = None
  decoder_layers_per_block: int | None = None

  def __post_init__(self):
    for name, widths in (("block_out_channels", self.block_out_channels),
                         ("decoder_block_out_channels", self.decoder_channels)):
      bad = [c for c in widths if c % self.norm_num_groups]
      if not widths or bad:
        raise ConfigError(f"VAEConfig.{name}", f"{widths} is empty or has widths {bad} not divisible by "
                          f"norm_num_groups={self.norm_num_groups}",
                          "use at least one level, each a multiple of norm_num_groups")
    if len(self.decoder_channels) != len(self.block_out_channels):
      raise ConfigError("VAEConfig.decoder_block_out_channels",
                        f"{len(self.decoder_channels)} levels, but the encoder has {len(self.block_out_channels)}",
                        "give the decoder as many levels as the encoder (they set the downsampling factor)")

  @property
  def decoder_channels(self) -> tuple[int, ...]:
    """The decoder's widths, encoder order (the decoder runs them from the last)."""
    return tuple(self.decoder_block_out_channels or self.block_out_channels)

  @property
  def decoder_layers(self) -> int:
    """Resnets per decoder level, less one (diffusers' decoder runs layers_per_block + 1)."""
    return self.layers_per_block if self.decoder_layers_per_block is None else self.decoder_layers_per_block

  @property
  def downsample_factor(self) -> int:
    """Image size / latent size (8 for SD)."""
    return 2 ** (len(self.block_out_channels) - 1)

  @classmethod
  def from_diffusers(cls, config: dict[str, Any]) -> VAEConfig:
    """From a diffusers AutoencoderKL config.json dict; refuses settings this port does not compute."""
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    levels = len(config.get("block_out_channels", cls.block_out_channels))
    # Per-channel latents_mean/std would change the latent normalisation; refuse rather than ignore them.
    expected = {"down_block_types": ("DownEncoderBlock2D",) * levels, "up_block_types": ("UpDecoderBlock2D",) * levels,
                "act_fn": "silu", "latents_mean": None, "latents_std": None}
    unsupported = {k: config[k] for k, v in expected.items() if k in config and config[k] != v}
    if unsupported:
      raise ConfigError("VAE config.json", f"unsupported settings {unsupported}",
                        "vidjax ports the SD AutoencoderKL (DownEncoderBlock2D/UpDecoderBlock2D, SiLU, scalar scaling)")
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in config.items() if k in fields})


class _MidAttention(nn.Module):
  """GroupNorm -> single-head self-attention over the H*W pixels -> + input, on (N, H, W, C).

  Shares its scope with the inner `Attention`, so the params sit side by side as in diffusers
  (attentions_0/{group_norm, to_q, to_k, to_v, to_out_0}).
  """

  channels: int
  num_groups: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.group_norm = layers.group_norm(self.num_groups, EPSILON, **kw)
    self.attention = Attention(heads=1, head_dim=self.channels, qkv_bias=True, **kw)
    nn.share_scope(self, self.attention)

  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    y = self.attention(self.group_norm(x).reshape(n, h * w, c))
    return x + y.reshape(n, h, w, c)


class _MidBlock(nn.Module):
  """resnet -> attention -> resnet at the lowest resolution (diffusers UNetMidBlock2D without temb)."""

  config: VAEConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    channels, groups = x.shape[-1], self.config.norm_num_groups
    x = ResnetBlock(out_channels=channels, num_groups=groups, epsilon=EPSILON, name="resnets_0", **kw)(x)
    if self.config.mid_block_add_attention:
      x = _MidAttention(channels=channels, num_groups=groups, name="attentions_0", **kw)(x)
    return ResnetBlock(out_channels=channels, num_groups=groups, epsilon=EPSILON, name="resnets_1", **kw)(x)


class _ResampleBlock(nn.Module):
  """`num_layers` resnets then an optional 2x resampling: DownEncoderBlock2D / UpDecoderBlock2D."""

  features: int
  num_layers: int
  num_groups: int
  resample: str | None  # 'down' (asymmetric-pad stride-2 conv), 'up' (nearest 2x + conv) or None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for i in range(self.num_layers):
      x = ResnetBlock(out_channels=self.features, num_groups=self.num_groups, epsilon=EPSILON, name=f"resnets_{i}",
                      **kw)(x)
    if self.resample == "down":
      x = layers.Downsample(features=self.features, asymmetric_pad=True, name="downsamplers_0", **kw)(x)
    elif self.resample == "up":
      x = layers.Upsample(features=self.features, name="upsamplers_0", **kw)(x)
    return x


def _conv3x3(features: int, name: str, **kw) -> nn.Conv:
  return layers.conv(features, padding=((1, 1), (1, 1)), name=name, **kw)


class Encoder(nn.Module):
  """(N, H, W, in_channels) -> (N, H/f, W/f, 2 * latent_channels) moments before quant_conv."""

  config: VAEConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = _conv3x3(c.block_out_channels[0], "conv_in", **kw)(x)
    last = len(c.block_out_channels) - 1
    for i, features in enumerate(c.block_out_channels):
      x = _ResampleBlock(features, c.layers_per_block, c.norm_num_groups, None if i == last else "down",
                         name=f"down_blocks_{i}", **kw)(x)
    x = _MidBlock(c, name="mid_block", **kw)(x)
    x = nn.silu(layers.group_norm(c.norm_num_groups, EPSILON, name="conv_norm_out", **kw)(x))
    return _conv3x3(2 * c.latent_channels, "conv_out", **kw)(x)


class Decoder(nn.Module):
  """(N, h, w, latent_channels) after post_quant_conv -> (N, h*f, w*f, out_channels)."""

  config: VAEConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = _conv3x3(c.decoder_channels[-1], "conv_in", **kw)(z)
    x = _MidBlock(c, name="mid_block", **kw)(x)
    last = len(c.decoder_channels) - 1
    for i, features in enumerate(reversed(c.decoder_channels)):
      x = _ResampleBlock(features, c.decoder_layers + 1, c.norm_num_groups, None if i == last else "up",
                         name=f"up_blocks_{i}", **kw)(x)
    x = nn.silu(layers.group_norm(c.norm_num_groups, EPSILON, name="conv_norm_out", **kw)(x))
    return _conv3x3(c.out_channels, "conv_out", **kw)(x)


class AutoencoderKL(nn.Module):
  """diffusers AutoencoderKL on channels-last images in [-1, 1].

  Use through `apply(..., method='encode' | 'decode')`, or the video helpers below. `__call__`
  reconstructs from the posterior mean (it is what `init` traces).
  """

  config: VAEConfig
  dtype: Dtype = jnp.float32  # compute
  param_dtype: Dtype = jnp.float32  # storage

  def setup(self):
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = Encoder(c, **kw)
    self.decoder = Decoder(c, **kw)
    self.quant_conv = layers.conv(2 * c.latent_channels, (1, 1), padding="VALID", **kw) if c.use_quant_conv else None
    self.post_quant_conv = (layers.conv(c.latent_channels, (1, 1), padding="VALID", **kw)
                            if c.use_post_quant_conv else None)

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x: (N, H, W, in_channels) -> float32 (mean, logvar), each (N, H/f, W/f, latent_channels).

    Odd sizes round down (the asymmetric-pad downsampling), as in diffusers.
    """
    moments = self.encoder(x)
    if self.quant_conv is not None:
      moments = self.quant_conv(moments)
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, z: jax.Array) -> jax.Array:
    """z: unscaled latents (N, h, w, latent_channels) -> float32 images (N, h*f, w*f, out_channels), unclipped."""
    z = z.astype(self.dtype)
    if self.post_quant_conv is not None:
      z = self.post_quant_conv(z)
    return self.decoder(z).astype(jnp.float32)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.decode(self.encode(x)[0])


def _check_video(video: jax.Array, channels: int, multiple: int, what: str) -> None:
  if video.ndim != 5 or video.shape[-1] != channels:
    raise InputError(what, f"shape {video.shape} is not (B, T, H, W, {channels})", f"pass a 5-D array with {channels} "
                     "channels last")
  if video.shape[2] % multiple or video.shape[3] % multiple:
    raise InputError(what, f"size {video.shape[2]}x{video.shape[3]} is not a multiple of {multiple}, so decoding "
                     "would not give it back", f"resize or crop the frames to multiples of {multiple}")


def _per_frame(fn: Callable[[jax.Array], Any], video: jax.Array, frames_per_chunk: int | None) -> Any:
  """Applies an image function to every frame of (B, T, ...): all at once, or `frames_per_chunk` at a time.

  Chunks run sequentially under `lax.map`, bounding activation memory; the last chunk is padded
  (with its wasted frames dropped) so the model compiles once.
  """
  if frames_per_chunk is not None and frames_per_chunk < 1:
    raise InputError("frames_per_chunk", f"{frames_per_chunk} is not positive", "pass None or a count >= 1")
  b, t = video.shape[:2]
  frames = video.reshape((b * t,) + video.shape[2:])
  if frames_per_chunk is None or frames_per_chunk >= b * t:
    out = fn(frames)
  else:
    chunks = -(-(b * t) // frames_per_chunk)
    padded = jnp.pad(frames, [(0, chunks * frames_per_chunk - b * t)] + [(0, 0)] * (frames.ndim - 1))
    out = jax.lax.map(fn, padded.reshape((chunks, frames_per_chunk) + frames.shape[1:]))
    out = jax.tree.map(lambda y: y.reshape((-1,) + y.shape[2:])[:b * t], out)
  return jax.tree.map(lambda y: y.reshape((b, t) + y.shape[1:]), out)


@functools.partial(jax.jit, static_argnames=("vae", "frames_per_chunk"))
def encode_video(vae: AutoencoderKL, params: Any, frames: jax.Array, rng: jax.Array | None = None, *,
                 frames_per_chunk: int | None = None) -> jax.Array:
  """Video -> the scaled latents the diffusion models see.

  Args:
    vae: the module (static: it holds the config).
    params: its params.
    frames: (B, T, H, W, in_channels) in [-1, 1]; H and W multiples of `config.downsample_factor`.
    rng: a key to sample the posterior; None takes its mean.
    frames_per_chunk: encode this many frames at a time (None: all B*T at once).
  Returns:
    float32 (B, T, H/f, W/f, latent_channels) = (z - shift_factor) * scaling_factor.
  """
  c = vae.config
  _check_video(frames, c.in_channels, c.downsample_factor, "encode_video frames")
  encode = functools.partial(vae.apply, {"params": params}, method=AutoencoderKL.encode)
  # Noise is drawn for the whole video after encoding, so chunking never changes a sample.
  mean, logvar = _per_frame(encode, frames, frames_per_chunk)
  z = mean if rng is None else mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
  return (z - (c.shift_factor or 0.0)) * c.scaling_factor


@functools.partial(jax.jit, static_argnames=("vae", "frames_per_chunk"))
def decode_video(vae: AutoencoderKL, params: Any, latents: jax.Array, *,
                 frames_per_chunk: int | None = None) -> jax.Array:
  """Scaled latents (B, T, h, w, latent_channels) -> float32 frames (B, T, h*f, w*f, out_channels), unclipped."""
  c = vae.config
  _check_video(latents, c.latent_channels, 1, "decode_video latents")
  z = latents / c.scaling_factor + (c.shift_factor or 0.0)
  return _per_frame(functools.partial(vae.apply, {"params": params}, method=AutoencoderKL.decode), z, frames_per_chunk)
