"""Depth structure conditioning: normalisation, structure-fidelity blur and its channels.

Gen-1 (Esser et al., Sec. 3.3) controls how closely an edit follows the input's structure with a
parameter the paper calls t_s and our APIs call `structure_fidelity`: the depth map goes through t_s
iterations of blurring and 2x downsampling and is resampled back to its resolution, so a larger t_s
keeps less detail (t_s = 0 keeps it all). Training draws t_s uniformly from 0..7; the model also
sees "four channels containing a sinusoidal embedding of t_s" (`structure_fidelity_channels`).

Every function takes numpy or jax arrays and answers in kind, through one implementation: the data
loader calls it with numpy per example, inference calls it with jax.numpy under `jit`, and the two
cannot drift apart.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vidjax import interpolate

# The paper's T_s: the last training stage samples t_s uniformly from 0..7.
MAX_STRUCTURE_FIDELITY = 7
# Angular frequencies of the t_s embedding: the transformer/DDPM sinusoid exp(-ln(1e4) k / 2) for
# k = 0, 1. The first separates neighbouring integers, the second is monotone over any usable t_s.
_EMBEDDING_FREQUENCIES = (1.0, 0.01)


def _array_module(x: Any):
  return jnp if isinstance(x, jax.Array) else np


def _blur_downsample_axis(x, axis: int, xp):
  """Blurs with the [1, 3, 3, 1] / 8 kernel and keeps every second sample along `axis`.

  Output sample j is centred on input position 2j + 0.5, the middle of input pixels 2j and 2j + 1,
  so resampling back with half-pixel centres is aligned with the input (an odd-kernel blur followed
  by [::2] would shift the map by half a pixel per level). Odd lengths are padded by repeating the
  edge; a length of 1 is returned unchanged.
  """
  n = x.shape[axis]
  if n == 1:
    return x
  x = xp.moveaxis(x, axis, -1)
  half = (n + 1) // 2
  padded = xp.concatenate([x[..., :1], x, xp.repeat(x[..., -1:], 1 + n % 2, axis=-1)], axis=-1)
  out = (padded[..., 0:2 * half:2] + 3.0 * padded[..., 1:2 * half + 1:2]
         + 3.0 * padded[..., 2:2 * half + 2:2] + padded[..., 3:2 * half + 3:2]) * 0.125
  return xp.moveaxis(out, -1, axis)


def _pyramid(depth, max_level: int, xp) -> list:
  """[level 0, ..., level max_level] of the blur pyramid, each at its own (halved) size."""
  levels = [depth]
  for _ in range(max_level):
    levels.append(_blur_downsample_axis(_blur_downsample_axis(levels[-1], -2, xp), -1, xp))
  return levels


def _upsample(level, size: tuple[int, int]):
  """A pyramid level back at the depth's size: bilinear with half-pixel centres (level 0 unchanged)."""
  return interpolate.resize(level, size, axes=(-2, -1))


def augment_structure(depth, structure_fidelity, *,
                      max_structure_fidelity: int = MAX_STRUCTURE_FIDELITY):
  """Removes detail from depth maps: t_s iterations of (blur + 2x downsample), then resample back.

  Args:
    depth: float (..., H, W) numpy or jax array (depth or inverse depth, any range).
    structure_fidelity: the paper's t_s. A Python int applies to every map; an int array of shape
      (B,) gives one value per entry of depth's leading axis and is clipped to
      [0, max_structure_fidelity] (it may be a traced value under `jit`).
    max_structure_fidelity: the largest t_s an int array may hold; levels up to it are computed.

  Returns:
    float32 (..., H, W), the same kind of array as `depth`; t_s = 0 returns the input values.
  """
  xp = _array_module(depth)
  depth = xp.asarray(depth, dtype=xp.float32)
  if isinstance(structure_fidelity, (int, np.integer)):
    if structure_fidelity < 0:
      raise ValueError(f"structure_fidelity must be >= 0, got {structure_fidelity}")
    return _upsample(_pyramid(depth, int(structure_fidelity), xp)[-1], depth.shape[-2:])
  levels = xp.stack([_upsample(level, depth.shape[-2:])
                     for level in _pyramid(depth, max_structure_fidelity, xp)])  # (L, B, ..., H, W)
  index = xp.clip(xp.asarray(structure_fidelity).astype(xp.int32), 0, max_structure_fidelity)
  index = index.reshape((1, -1) + (1,) * (depth.ndim - 1))
  return xp.take_along_axis(levels, index, axis=0)[0]


def structure_fidelity_channels(structure_fidelity, height: int, width: int):
  """The four t_s channels of Gen-1 Sec. 3.3: [sin(f0 t), sin(f1 t), cos(f0 t), cos(f1 t)].

  Args:
    structure_fidelity: t_s, a number or an array of shape S (numpy or jax).
    height, width: the image size to broadcast over.

  Returns:
    float32 S + (height, width, 4), numpy unless `structure_fidelity` is a jax array.
  """
  xp = _array_module(structure_fidelity)
  t = xp.asarray(structure_fidelity, dtype=xp.float32)
  angles = t[..., None] * xp.asarray(_EMBEDDING_FREQUENCIES, dtype=xp.float32)
  embedding = xp.concatenate([xp.sin(angles), xp.cos(angles)], axis=-1)
  return xp.broadcast_to(embedding[..., None, None, :], t.shape + (height, width, 4))


def normalize_depth(depth, eps: float = 1e-6):
  """Maps each sample to [-1, 1] by its own min and max, as Stable Diffusion 2 depth does.

  Args:
    depth: float (B, ...) numpy or jax array; entry b of the leading axis is one sample (a clip of
      (T, H, W) is normalised jointly over its frames, which keeps depth consistent in time).
    eps: a flat sample (max - min < eps) maps to -1 instead of dividing by zero.

  Returns:
    float32 (B, ...) in [-1, 1], the same kind of array as `depth`.
  """
  xp = _array_module(depth)
  depth = xp.asarray(depth, dtype=xp.float32)
  axes = tuple(range(1, depth.ndim))
  low = xp.min(depth, axis=axes, keepdims=True)
  high = xp.max(depth, axis=axes, keepdims=True)
  return 2.0 * (depth - low) / xp.maximum(high - low, eps) - 1.0
