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
  """diffusers ResnetBlock2D on (N, H, W, C), plus temporal layers when `temporal_conv` != 'none'.

    h = conv1(silu(norm1(x)))            [+ Gen-1 temporal conv]
    h = h + time_emb_proj(silu(temb))    (UNet only)
    h = conv2(dropout(silu(norm2(h))))   [+ Gen-1 temporal conv]
    out = (shortcut(x) + h) / output_scale_factor
    out = out + pseudo3d(out)            [Make-Your-Video]
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
    """x: (N, H, W, Cin); temb: (N, E) or None; temporal: how temporal layers run (None: none)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    gen1 = self.temporal_conv == "conv1d" and temporal is not None
    h = nn.silu(layers.group_norm(self.num_groups, self.epsilon, name="norm1", **kw)(x))
    h = layers.conv(self.out_channels, padding=((1, 1), (1, 1)), name="conv1", **kw)(h)
    if gen1:
      h = temporal.residual(h, TemporalConv(name="temporal_conv1", **kw))
    if temb is not None:
      h = h + layers.dense(self.out_channels, names=("embed", "conv_out"), name="time_emb_proj", **kw)(
          nn.silu(temb))[:, None, None, :]
    h = nn.silu(layers.group_norm(self.num_groups, self.epsilon, name="norm2", **kw)(h))
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = layers.conv(self.out_channels, padding=((1, 1), (1, 1)), name="conv2", **kw)(h)
    if gen1:
      h = temporal.residual(h, TemporalConv(name="temporal_conv2", **kw))
    if x.shape[-1] != self.out_channels:
      x = layers.conv(self.out_channels, (1, 1), padding="VALID", name="conv_shortcut", **kw)(x)
    out = (x + h) / self.output_scale_factor
    if self.temporal_conv == "pseudo3d" and temporal is not None:
      out = temporal.residual(out, Pseudo3DConvBlock(self.num_groups, name="temporal_conv", **kw))
    return out
