"""The project's one resampler: PyTorch's `F.interpolate` exactly (bilinear and bicubic, no antialias).

DPT checkpoints were trained with torch's resampling: position embeddings and fusion skips use
bilinear with half-pixel centres (align_corners=False), the fusion and head upsamplers use
align_corners=True, and depth is brought back to the image (and SD-2-depth brings it to the latent)
with bicubic, whose kernel is Keys' with a = -0.75 (`jax.image.resize` uses a = -0.5 and
antialiases, so it does not match). The structure-fidelity pyramid (`conditioning.structure`) and the
pipeline's depth and mask fitting use its bilinear, align_corners=False. Each axis is resampled by a
small (out, in) matrix built once per shape in numpy, which handles edge clamping by accumulating
out-of-range taps on the border. It sits below `models/` because conditioning uses it too.

numpy arrays are resampled with numpy (the data loader's per-example work stays off the devices),
jax arrays (traced ones included) with jax.numpy: the same matrix either way.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = np.ndarray | jax.Array
METHODS = ("bilinear", "bicubic")
_CUBIC_A = -0.75  # torch's upsample_bicubic2d coefficient


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """(N,) fractional offsets -> (N, 4) weights of taps floor-1 .. floor+2 (Keys, a = -0.75)."""
  a = _CUBIC_A
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # |x| <= 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=256)
def interpolation_matrix(size_in: int, size_out: int, method: str, align_corners: bool) -> np.ndarray:
  """The float32 (size_out, size_in) matrix M with out = M @ in along one axis, as torch computes it."""
  if method not in METHODS:
    raise ValueError(f"interpolation method {method!r}: expected one of {METHODS}")
  out = np.arange(size_out, dtype=np.float64)
  if align_corners:
    source = out * ((size_in - 1) / (size_out - 1)) if size_out > 1 else np.zeros_like(out)
  else:
    source = (out + 0.5) * (size_in / size_out) - 0.5
    if method == "bilinear":  # torch clamps negative linear sources to 0; the cubic path does not
      source = np.maximum(source, 0.0)
  low = np.floor(source).astype(np.int64)
  t = source - low
  if method == "bilinear":
    offsets, weights = np.arange(2), np.stack([1 - t, t], axis=-1)
  else:
    offsets, weights = np.arange(-1, 3), _cubic_weights(t)
  taps = np.clip(low[:, None] + offsets[None, :], 0, size_in - 1)
  matrix = np.zeros((size_out, size_in), np.float64)
  np.add.at(matrix, (np.repeat(np.arange(size_out), len(offsets)), taps.ravel()), weights.ravel())
  return matrix.astype(np.float32)


def resize_axis(x: Array, size: int, axis: int, *, method: str = "bilinear", align_corners: bool = False) -> Array:
  """Resamples `x` (numpy or jax) to `size` samples along `axis`, in x's dtype and kind (x itself when the
  size matches)."""
  axis = axis % x.ndim
  if x.shape[axis] == size:
    return x
  matrix = interpolation_matrix(x.shape[axis], size, method, align_corners).astype(x.dtype)
  if isinstance(x, jax.Array):
    # HIGHEST: the default TPU/GPU matmul precision would round the weights of an exact resampling.
    return jnp.moveaxis(jnp.tensordot(matrix, x, axes=[[1], [axis]], precision=jax.lax.Precision.HIGHEST), 0, axis)
  return np.moveaxis(np.tensordot(matrix, x, axes=[[1], [axis]]), 0, axis)


def resize(x: Array, size: tuple[int, int], *, axes: tuple[int, int] = (1, 2), method: str = "bilinear",
           align_corners: bool = False) -> Array:
  """torch `F.interpolate(x, size, mode=method, align_corners=...)` on two axes of any layout.

  Args:
    x: numpy or jax array with spatial axes `axes`, e.g. (N, H, W, C) with the default (1, 2), or
      (N, H, W) with (1, 2) or (-2, -1).
    size: (out_h, out_w).
  Returns:
    x resampled to `size` on those axes, in x's dtype, as the same kind of array.
  """
  x = resize_axis(x, size[0], axes[0], method=method, align_corners=align_corners)
  return resize_axis(x, size[1], axes[1], method=method, align_corners=align_corners)
