"""MiDaS v3 DPT depth in linen, and the batched estimator that turns clips into structure maps.

`DPT` computes what transformers' `DPTForDepthEstimation` computes (tested to 1e-4): a ViT
(DPT-Large, Gen-1's structure model) or a BiT-stem ViT (DPT-Hybrid, SD-2-depth and
Make-Your-Video's) read at four layers, a reassemble stage that turns tokens back into maps at
4x, 2x, 1x and 0.5x the patch grid, a fusion stage that merges them coarse to fine, and a head that
outputs relative inverse depth (large = near, >= 0, arbitrary scale and shift).
Unlike transformers, non-square inputs work (the patch grid is known), as in the original MiDaS.

  estimator = vidjax.convert.hf_dpt.load_depth_estimator("/weights/dpt-hybrid-midas")  # loading is convert's
  depth = estimator(frames)  # uint8 (T, H, W, 3) -> float32 (T, H, W) in [0, 1], 1 = nearest
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vidjax import interpolate
from vidjax.conditioning.structure import normalize_depth
from vidjax.errors import InputError
from vidjax.models import layers
from vidjax.models.dpt_backbone import ACTIVATIONS, DPTConfig, ViT

__all__ = ["DPT", "DPTConfig", "DepthEstimator", "model_input_size",
           "normalize_depth_for_unet", "preprocess_frames"]


def _conv3x3(features: int, name: str, *, strides: int = 1, use_bias: bool = True, **kw) -> nn.Conv:
  return layers.conv(features, (3, 3), strides=strides, padding=((1, 1), (1, 1)), use_bias=use_bias, name=name, **kw)


def _conv1x1(features: int, name: str, **kw) -> nn.Conv:
  return layers.conv(features, (1, 1), padding="VALID", name=name, **kw)


def _upsample2x(x: jax.Array) -> jax.Array:
  """(N, h, w, C) -> (N, 2h, 2w, C), bilinear with align_corners=True as DPT's fusion and head."""
  return interpolate.resize(x, (2 * x.shape[1], 2 * x.shape[2]), method="bilinear", align_corners=True)


class ReassembleLayer(nn.Module):
  """1x1 projection to `features`, then resize by `factor`: transposed conv (> 1) or strided 3x3 (< 1)."""

  config: DPTConfig
  features: int
  factor: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (N, h, w, D) -> (N, h * factor, w * factor, features) (a 0.5 factor rounds up)."""
    kw = self.config.kw()
    x = _conv1x1(self.features, "projection", **kw)(x)
    if self.factor > 1:
      f = int(self.factor)
      # transpose_kernel: the kernel is torch's ConvTranspose2d weight (in, out, k, k) laid out (k, k, out, in).
      init = layers.partitioned(nn.initializers.lecun_normal(), ("conv_h", "conv_w", "conv_out", "conv_in"))
      x = nn.ConvTranspose(self.features, (f, f), strides=(f, f), padding="VALID", transpose_kernel=True,
                           kernel_init=init, name="resize", **kw)(x)
    elif self.factor < 1:
      x = _conv3x3(self.features, "resize", strides=int(round(1 / self.factor)), **kw)(x)
    return x


class ReassembleStage(nn.Module):
  """Hooked token sequences -> feature maps (the readout folds the CLS token into every patch)."""

  config: DPTConfig

  @nn.compact
  def __call__(self, hidden: list[jax.Array], grid: tuple[int, int]) -> list[jax.Array]:
    """hidden: [(N, 1 + h*w, D)] -> [(N, h_i, w_i, neck_hidden_sizes[i])], stage i from 2 for DPT-Hybrid."""
    c, kw = self.config, self.config.kw()
    first = 2 if c.is_hybrid else 0
    maps = []
    for i, tokens in enumerate(hidden, start=first):
      cls_token, x = tokens[:, :1], tokens[:, 1:]
      if c.readout_type == "project":
        readout = jnp.broadcast_to(cls_token, x.shape)
        x = layers.dense(x.shape[-1], names=("mlp", "embed"), name=f"readout_projects_{i}_0", **kw)(
            jnp.concatenate([x, readout], axis=-1))
        x = ACTIVATIONS[c.hidden_act](x)
      elif c.readout_type == "add":
        x = x + cls_token
      x = x.reshape(x.shape[0], *grid, x.shape[-1])
      maps.append(ReassembleLayer(c, c.neck_hidden_sizes[i], c.reassemble_factors[i], name=f"layers_{i}")(x))
    return maps


class PreActResidual(nn.Module):
  """x + conv2(relu(conv1(relu(x)))), 3x3 convs (MiDaS' ResidualConvUnit)."""

  config: DPTConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c, kw = self.config, self.config.kw()
    h = _conv3x3(c.fusion_hidden_size, "convolution1", use_bias=c.use_bias_in_fusion_residual, **kw)(nn.relu(x))
    h = _conv3x3(c.fusion_hidden_size, "convolution2", use_bias=c.use_bias_in_fusion_residual, **kw)(nn.relu(h))
    return x + h


class FusionLayer(nn.Module):
  """Adds the refined skip map, refines, upsamples 2x and projects (1x1)."""

  config: DPTConfig

  @nn.compact
  def __call__(self, x: jax.Array, skip: jax.Array | None = None) -> jax.Array:
    """x: (N, h, w, F); skip: (N, h', w', F) or None -> (N, 2h, 2w, F)."""
    c, kw = self.config, self.config.kw()
    if skip is not None:
      if skip.shape != x.shape:  # sizes that are not multiples of 32 leave off-by-one grids
        skip = interpolate.resize(skip, x.shape[1:3], method="bilinear", align_corners=False)
      x = x + PreActResidual(c, name="residual_layer1")(skip)
    x = _upsample2x(PreActResidual(c, name="residual_layer2")(x))
    return _conv1x1(c.fusion_hidden_size, "projection", **kw)(x)


class Neck(nn.Module):
  """Reassemble, project every map to `fusion_hidden_size` (3x3, no bias), fuse coarse to fine."""

  config: DPTConfig

  @nn.compact
  def __call__(self, residuals: list[jax.Array], hidden: list[jax.Array], grid: tuple[int, int]) -> jax.Array:
    """Returns the finest fused map (N, 8h, 8w, F) for a patch grid (h, w) (`head_in_index` picks)."""
    c, kw = self.config, self.config.kw()
    maps = residuals + ReassembleStage(c, name="reassemble_stage")(hidden, grid)
    maps = [_conv3x3(c.fusion_hidden_size, f"convs_{i}", use_bias=False, **kw)(m) for i, m in enumerate(maps)]
    fused, outputs = None, []
    for i, skip in enumerate(reversed(maps)):
      layer = FusionLayer(c, name=f"fusion_stage_layers_{i}")
      fused = layer(skip) if fused is None else layer(fused, skip)
      outputs.append(fused)
    return outputs[c.head_in_index]


class DepthHead(nn.Module):
  """conv3x3 (F/2) -> 2x upsample -> conv3x3 (32) -> ReLU -> conv1x1 (1) -> ReLU."""

  config: DPTConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (N, h, w, F) -> (N, 2h, 2w) relative inverse depth, >= 0."""
    c, kw = self.config, self.config.kw()
    if c.add_projection:
      x = nn.relu(_conv3x3(256, "projection", **kw)(x))
    x = _upsample2x(_conv3x3(c.fusion_hidden_size // 2, "head_0", **kw)(x))
    x = nn.relu(_conv3x3(32, "head_2", **kw)(x))
    return nn.relu(_conv1x1(1, "head_4", **kw)(x))[..., 0]


class DPT(nn.Module):
  """DPT depth model; module names follow `DPTForDepthEstimation` (dpt, neck, head)."""

  config: DPTConfig

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    """pixels: (N, H, W, C) normalised to [-1, 1], H and W multiples of 32 (16 works; see FusionLayer).

    Returns:
      (N, 16h, 16w) float32 relative inverse depth for the patch grid (h, w): (N, H, W) with
      16-pixel patches (every MiDaS DPT).
    """
    residuals, hidden, grid = ViT(self.config, name="dpt")(pixels)
    features = Neck(self.config, name="neck")(residuals, hidden, grid)
    return DepthHead(self.config, name="head")(features).astype(jnp.float32)


def model_input_size(height: int, width: int, *, image_size: int = 384, multiple: int = 32,
                     keep_aspect_ratio: bool = True) -> tuple[int, int]:
  """The size DPTImageProcessor resizes an (height, width) image to, MiDaS settings by default.

  With `keep_aspect_ratio`, the side whose scale to `image_size` is closer to 1 sets one scale for
  both (the smallest change of size); each side is then rounded to the nearest `multiple` (at
  least one multiple, where transformers would give 0 for a tiny image).
  """
  scale_h, scale_w = image_size / height, image_size / width
  if keep_aspect_ratio:
    scale_h = scale_w = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
  constrain = lambda v: max(int(round(v / multiple)) * multiple, multiple)
  return constrain(scale_h * height), constrain(scale_w * width)


def preprocess_frames(frames: jax.Array, size: tuple[int, int]) -> jax.Array:
  """uint8 (N, H, W, 3) -> float32 (N, size[0], size[1], 3) in [-1, 1] (mean = std = 0.5).

  The resize is antialiased bicubic with Keys a = -0.5, the kernel of PIL's BICUBIC that
  DPTImageProcessor uses, clipped to the uint8 range as PIL's output is.
  """
  x = frames.astype(jnp.float32) / 255.0
  x = jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), method="bicubic", antialias=True)
  return (jnp.clip(x, 0.0, 1.0) - 0.5) / 0.5


def normalize_depth_for_unet(depth, size: tuple[int, int]) -> jax.Array:
  """Depth as SD-2-depth's UNet reads it (diffusers' `StableDiffusionDepth2ImgPipeline.prepare_depth_map`).

  Bicubic resize (torch's, align_corners=False) to the latent size, then 2 (d - min) / (max - min) - 1
  with min and max per sample, through the project's one `normalize_depth`.

  Args:
    depth: float (B, H, W) inverse depth (numpy or jax); each entry of axis 0 is one sample, so
      pass frames as (T, H, W) to normalise them one by one as SD-2-depth does.
    size: the latent (h, w), image size // 8 for the SD VAE.
  Returns:
    float32 (B, h, w) jax array in [-1, 1].
  """
  depth = jnp.asarray(depth, jnp.float32)
  return normalize_depth(interpolate.resize(depth, size, axes=(-2, -1), method="bicubic", align_corners=False))


class DepthEstimator:
  """Batched, jitted DPT on clips: uint8 (T, H, W, 3) -> float32 (T, H, W) in [0, 1].

  Frames go through the model in batches of `batch_size`, the last one padded by repeating the
  last frame, so one compilation per input size serves clips of any length. Each batch is
  preprocessed as MiDaS' DPTImageProcessor (aspect kept, sides multiples of 32, [-1, 1]), run,
  and its depth resized back to (H, W) with bicubic as transformers' `post_process_depth_estimation`.
  `__call__` then min-max normalises over the whole clip, not per frame, so the maps do not flicker:
  0 is the farthest and 1 the nearest point of the clip (a flat clip gives zeros).
  """

  def __init__(self, config: DPTConfig, params, *, batch_size: int = 8, image_size: int = 384,
               multiple: int = 32, keep_aspect_ratio: bool = True):
    self.config, self.batch_size = config, batch_size
    self._size_kw = dict(image_size=image_size, multiple=multiple, keep_aspect_ratio=keep_aspect_ratio)
    self.params = jax.device_put(params)
    self._model = DPT(config)
    self._predict = jax.jit(self._predict_batch, static_argnames="size")

  def _predict_batch(self, params, frames: jax.Array, size: tuple[int, int]) -> jax.Array:
    """uint8 (B, H, W, 3) -> float32 (B, H, W) raw inverse depth, the model run at `size`."""
    pixels = preprocess_frames(frames, size).astype(jnp.dtype(self.config.dtype))
    depth = self._model.apply({"params": params}, pixels)
    return interpolate.resize(depth, frames.shape[1:3], method="bicubic", align_corners=False)

  def inverse_depth(self, frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) -> float32 (T, H, W) relative inverse depth, unnormalised."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not frames.shape[0]:
      raise InputError(f"frames {frames.dtype} {frames.shape}", "depth needs uint8 RGB frames (T, H, W, 3), T > 0",
                       "pass decoded video frames as a uint8 array")
    count = frames.shape[0]
    size = model_input_size(*frames.shape[1:3], **self._size_kw)
    padded = np.pad(frames, ((0, -count % self.batch_size), (0, 0), (0, 0), (0, 0)), mode="edge")
    batches = [self._predict(self.params, padded[i:i + self.batch_size], size=size)
               for i in range(0, len(padded), self.batch_size)]
    return np.concatenate([np.asarray(b) for b in batches])[:count]

  def __call__(self, frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) -> float32 (T, H, W) inverse depth min-max normalised over the clip to [0, 1]."""
    depth = self.inverse_depth(frames)
    low, high = float(depth.min()), float(depth.max())
    if not high > low:
      return np.zeros_like(depth)
    return (depth - low) / (high - low)
