"""Temporal layers: both papers' variants, gating between image and video mode, causal windows.

Videos are (B, T, H, W, C). Spatial layers run per frame (`layers.per_frame`, nn.vmap over T with
shared parameters); temporal layers act along T and return a *residual branch* whose output
projection starts at zero, so a fresh video model equals the image model frame by frame.
`TemporalInfo` carries what they need:
  * image mode (`enabled=False`): temporal layers are skipped (Gen-1 joint training's image batches);
  * `gate` (B,): per-sample 1 = video, 0 = image, so Eq. 8's image-model prediction can ride in the
    same batched call as the video predictions;
  * `window`: Make-Your-Video's causal receptive field L_M (a traced scalar, so changing it does not
    recompile).
Variants:
  * 'conv1d' (Gen-1): a 1D temporal conv (kernel 3 over T) after each spatial conv of a res block;
  * 'pseudo3d' (Make-Your-Video STRB): after each res block, GN-SiLU-conv stages alternating temporal
    (3,1,1) and spatial (1,3,3) kernels, replicate-padded in time, the last one zero-initialised;
  * TemporalTransformer: self-attention along T per pixel, with learned frame-index position
    embeddings (Gen-1) and/or relative positions and a causal window mask (Make-Your-Video). Clips
    longer than the relative-position distance C attend block by block (`CausalBand`): memory
    linear in T, so long videos fit.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from vidjax.errors import ConfigError
from vidjax.models import layers
from vidjax.models.attention import CausalBand, TransformerBlock

Dtype = Any


@flax.struct.dataclass
class TemporalInfo:
  """How temporal layers run in one UNet call (see module docstring)."""

  gate: jax.Array | None  # (B,) float, 1 = video mode, 0 = image mode; None = all video
  window: jax.Array | None  # () int, causal window L_M; None = the whole past (or all frames if not causal)
  enabled: bool = flax.struct.field(pytree_node=False, default=True)

  def residual(self, x: jax.Array, branch: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """x + gate * branch(x) on (B, T, H, W, C) videos; identity in image mode."""
    if not self.enabled:
      return x
    delta = branch(x)
    if self.gate is not None:
      delta = delta * self.gate.astype(delta.dtype)[:, None, None, None, None]
    return x + delta


def causal_window_mask(num_frames: int, window: jax.Array | int | None) -> jax.Array:
  """(T, T) bool: frame i attends to frames j with i - window < j <= i (all j <= i if window is None)."""
  i = jnp.arange(num_frames)[:, None]
  j = jnp.arange(num_frames)[None, :]
  mask = j <= i
  if window is not None:
    mask = mask & (i - j < window)
  return mask


def _replicate_pad_time(x: jax.Array, pad: int) -> jax.Array:
  return jnp.pad(x, ((0, 0), (pad, pad), (0, 0), (0, 0), (0, 0)), mode="edge")


class TemporalConv(nn.Module):
  """Gen-1's temporal conv on (B, T, H, W, C): a kernel-3 conv over T, zero-initialised (identity residual)."""

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return layers.conv(x.shape[-1], (3, 1, 1), padding="VALID", zero_init=True, dtype=self.dtype,
                       param_dtype=self.param_dtype, name="conv")(_replicate_pad_time(x, 1))


class _NormActConv(nn.Module):
  """GroupNorm (over T, H, W and the group's channels) -> SiLU -> 3D conv, on (B, T, H, W, C)."""

  kernel: tuple[int, int, int]
  num_groups: int
  zero_init: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = nn.silu(layers.group_norm(self.num_groups, 1e-5, name="norm", **kw)(x))
    if self.kernel[0] == 3:  # temporal taps: replicate padding in time, as Make-Your-Video
      return layers.conv(x.shape[-1], self.kernel, padding="VALID", zero_init=self.zero_init, name="conv", **kw)(
          _replicate_pad_time(h, 1))
    return layers.conv(x.shape[-1], self.kernel, padding=((0, 0), (1, 1), (1, 1)), zero_init=self.zero_init,
                       name="conv", **kw)(h)


class Pseudo3DConvBlock(nn.Module):
  """Make-Your-Video's spatio-temporal residual branch: temporal, spatial, temporal, temporal, last (zero)."""

  num_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(num_groups=self.num_groups, dtype=self.dtype, param_dtype=self.param_dtype)
    for i, kernel in enumerate(((3, 1, 1), (1, 3, 3), (3, 1, 1), (3, 1, 1))):
      x = _NormActConv(kernel=kernel, name=f"conv_{i}", **kw)(x)
    return _NormActConv(kernel=(3, 1, 1), zero_init=True, name="conv_last", **kw)(x)


class TemporalTransformer(nn.Module):
  """Self-attention along T for every pixel, on (B, T, H, W, C); returns the residual branch.

  GroupNorm (eps 1e-6, over T, H, W) -> proj_in -> [+ frame-index embeddings] -> `depth` blocks of two
  self-attentions (relative positions and the causal window mask in both, as Make-Your-Video's
  temporal blocks) and a GEGLU FF -> proj_out (zero-initialised).

  A causal window L_M over T > C frames (C = relative_position) runs as a `CausalBand` of C-frame
  blocks: logits (B*H*W*T/C, N, C, 2C) instead of (B*H*W, N, T, T). That is exact for L_M <= C + 1
  and treats a larger L_M as C + 1; the whole past (window None) and clips of at most C frames take
  one (T, T) mask.
  """

  heads: int
  head_dim: int
  depth: int = 1
  num_groups: int = 32
  relative_position: int = 0  # max clipped distance; 0 = none (Make-Your-Video: 16)
  max_frames: int = 0  # learned frame-index position embeddings for up to this many frames; 0 = none (Gen-1: 8+)
  causal: bool = False
  block_local: bool = True  # False: always one (T, T) mask, quadratic in T (the reference the band is tested on)
  backend: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, window: jax.Array | int | None = None) -> jax.Array:
    """x: (B, T, H, W, C); window: causal L_M (traced), None = the whole past. Returns (B, T, H, W, C)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, t, h, w, c = x.shape
    inner = self.heads * self.head_dim
    y = layers.group_norm(self.num_groups, 1e-6, name="norm", **kw)(x)
    y = jnp.transpose(y, (0, 2, 3, 1, 4)).reshape(b * h * w, t, c)
    y = layers.dense(inner, names=("embed", "mlp"), name="proj_in", **kw)(y)
    if self.max_frames:
      if t > self.max_frames:
        raise ConfigError(f"{t} frames", f"more frames than the {self.max_frames} frame-index embeddings",
                          "sample at most max_frames frames, or use a causal window with relative positions")
      table = self.param("frame_position_embedding",
                         layers.partitioned(nn.initializers.normal(0.02), (None, "mlp")),
                         (self.max_frames, inner), self.param_dtype)
      y = y + table[:t].astype(y.dtype)
    mask = band = None
    banded = self.block_local and self.relative_position and window is not None and t > self.relative_position
    if self.causal and banded:
      band = CausalBand(window=window, block=self.relative_position)
    elif self.causal:
      mask = causal_window_mask(t, window)
    for i in range(self.depth):
      y = TransformerBlock(heads=self.heads, head_dim=self.head_dim, cross_attention=False,
                           relative_position=self.relative_position, backend=self.backend,
                           name=f"transformer_blocks_{i}", **kw)(y, mask=mask, band=band)
    y = layers.dense(c, names=("mlp", "embed"), zero_init=True, name="proj_out", **kw)(y)
    return jnp.transpose(y.reshape(b, h, w, t, c), (0, 3, 1, 2, 4))
