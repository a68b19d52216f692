"""The residual block shared by the UNet and the VAE, with the papers' temporal hooks."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vidjax.models import layers
from vidjax.models.temporal import Pseudo3DConvBlock, TemporalConv, TemporalInfo

Dtype = Any
TEMPORAL_CONV_KINDS = ("none", "conv1d", "pseudo3d")


class ResnetBlock(nn.Module):
  """diffusers ResnetBlock2D, plus temporal layers when `temporal_conv` != 'none'.

    h = conv1(silu(norm1(x)))            [+ Gen-1 temporal conv]
    h = h + time_emb_proj(silu(temb))    (UNet only)
    h = conv2(dropout(silu(norm2(h))))   [+ Gen-1 temporal conv]
    out = (shortcut(x) + h) / output_scale_factor
    out = out + pseudo3d(out)            [Make-Your-Video]

  On images (the VAE, `temporal` None) everything is per image. On videos (the UNet) the three
  spatial stages run per frame (`layers.per_frame`) and the temporal layers between them act along T.
  """

  out_channels: int
  num_groups: int = 32
  epsilon: float = 1e-5
  temporal_conv: str = "none"
  dropout: float = 0.0
  output_scale_factor: float = 1.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array | None = None, temporal: TemporalInfo | None = None,
               deterministic: bool = True) -> jax.Array:
    """Images x: (N, H, W, Cin), temb: (N, E) or None, temporal None -> (N, H, W, out_channels).

    Videos x: (B, T, H, W, Cin), temb: (B, E) or None, temporal: how temporal layers run
    -> (B, T, H, W, out_channels).
    """
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    second = lambda block, h, temb: _second_conv(block, h, temb, deterministic)
    if temporal is None:
      return _output(self, x, second(self, _first_conv(self, x), temb))
    h = layers.per_frame(_first_conv, self, x)
    if self.temporal_conv == "conv1d":
      h = temporal.residual(h, TemporalConv(name="temporal_conv1", **kw))
    h = layers.per_frame(second, self, h, shared=(temb,))
    if self.temporal_conv == "conv1d":
      h = temporal.residual(h, TemporalConv(name="temporal_conv2", **kw))
    out = layers.per_frame(_output, self, x, h)
    if self.temporal_conv == "pseudo3d":
      out = temporal.residual(out, Pseudo3DConvBlock(num_groups=self.num_groups, name="temporal_conv", **kw))
    return out


# The spatial stages of a ResnetBlock on (N, H, W, C) images, building its layers inline.

def _first_conv(block: ResnetBlock, x: jax.Array) -> jax.Array:
  kw = dict(dtype=block.dtype, param_dtype=block.param_dtype)
  h = nn.silu(layers.group_norm(block.num_groups, block.epsilon, name="norm1", **kw)(x))
  return layers.conv(block.out_channels, padding=((1, 1), (1, 1)), name="conv1", **kw)(h)


def _second_conv(block: ResnetBlock, h: jax.Array, temb: jax.Array | None, deterministic: bool) -> jax.Array:
  kw = dict(dtype=block.dtype, param_dtype=block.param_dtype)
  if temb is not None:
    h = h + layers.dense(block.out_channels, names=("embed", "conv_out"), name="time_emb_proj", **kw)(
        nn.silu(temb))[:, None, None, :]
  h = nn.silu(layers.group_norm(block.num_groups, block.epsilon, name="norm2", **kw)(h))
  h = nn.Dropout(block.dropout)(h, deterministic=deterministic)
  return layers.conv(block.out_channels, padding=((1, 1), (1, 1)), name="conv2", **kw)(h)


def _output(block: ResnetBlock, x: jax.Array, h: jax.Array) -> jax.Array:
  if x.shape[-1] != block.out_channels:
    x = layers.conv(block.out_channels, (1, 1), padding="VALID", name="conv_shortcut", dtype=block.dtype,
                    param_dtype=block.param_dtype)(x)
  return (x + h) / block.output_scale_factor
