"""Inception-v1 I3D (Carreira & Zisserman, "Quo Vadis, Action Recognition?") in linen: the FVD feature net.

The layout of the PyTorch port most FVD code loads (piergiaj's `InceptionI3d`, which cd-fvd and TATS
ship with the Kinetics-400 weights `i3d_pretrained_400.pt`), channels-last: (B, T, H, W, 3) clips in
[-1, 1] from `preprocess_videos`. Parameter names mirror the state dict's (`Conv3d_1a_7x7/conv3d`,
`Mixed_3b/b1b/bn`, `logits/conv3d`) so `vidjax.convert.i3d` is a rename of a few leaves.

Differences from the PyTorch module, none of which changes a number:
  * batch norm is frozen (inference only): its running mean and variance are params (`mean`, `var`)
    beside `scale` and `bias`, so one collection holds the whole model;
  * 'same' max pools pad with zeros, as the PyTorch port does (F.pad then max), which equals padding
    with -inf here because every pooled tensor is a ReLU output (>= 0);
  * the logits are the 1x1x1 logits conv of `pooled` (the average-pooled features averaged over what
    is left of time), which equals the port's conv-then-time-mean because both are linear.

Features (`I3D.__call__`): `logits` (B, 400) before any softmax, the layer cd-fvd and StyleGAN-V's FVD
use; `pooled` (B, 1024), the pre-logit pool (Mixed_5c average-pooled over 2x7x7 windows, then averaged).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vidjax.errors import ConfigError, InputError
from vidjax.models import layers

Dtype = Any
NUM_CLASSES = 400  # Kinetics-400
FEATURE_DIM = 1024  # channels of Mixed_5c, the pre-logit pool
# The final 2x7x7 average pool needs a (>= 2, >= 7, >= 7) Mixed_5c map: time is halved 3 times and
# space 5 times (ceil, 'same' padding), so clips need >= 9 frames and >= 193 pixels a side.
MIN_FRAMES = 9
MIN_SIZE = 193
# Mixed blocks' output channels: (1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | 3x3x3 max pool -> 1x1).
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32), "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64), "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64), "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128), "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
_BN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class I3DConfig:
  """The classes of the logits layer (400 for Kinetics-400 weights), and a width divisor.

  `channel_divisor` 1 is the real I3D (the only width with weights); 2, 4 or 8 divide every layer's
  channels (pooled features 1024 / divisor), a network about divisor^2 times cheaper with the same
  strides, paddings and minimum clip size, for tests and for timing the evaluation job's plumbing.
  """

  num_classes: int = NUM_CLASSES
  channel_divisor: int = 1

  def __post_init__(self):
    if self.channel_divisor not in (1, 2, 4, 8):
      raise ConfigError("I3DConfig.channel_divisor", f"{self.channel_divisor} does not divide every layer",
                        "use 1 (the real I3D), 2, 4 or 8")

  def width(self, channels: int) -> int:
    return channels // self.channel_divisor


def same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TF 'SAME' padding (more at the end), which the PyTorch port computes per call."""
  total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
  return total // 2, total - total // 2


def max_pool_same(x: jax.Array, window: tuple[int, int, int], strides: tuple[int, int, int]) -> jax.Array:
  """(B, T, H, W, C) -> (B, ceil(T / st), ceil(H / sh), ceil(W / sw), C), zero-padded 'same' max pool."""
  pads = [same_pad(n, k, s) for n, k, s in zip(x.shape[1:4], window, strides)]
  x = jnp.pad(x, [(0, 0)] + pads + [(0, 0)])
  return nn.max_pool(x, window, strides=strides, padding="VALID")


class _FrozenBatchNorm(nn.Module):
  """Inference batch norm, (x - mean) / sqrt(var + eps) * scale + bias, its statistics stored as params."""

  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]

    def param(name, init):
      return self.param(name, layers.partitioned(init, ("norm",)), (features,), self.param_dtype).astype(x.dtype)

    zeros, ones = nn.initializers.zeros_init(), nn.initializers.ones_init()
    mean, var, scale, bias = param("mean", zeros), param("var", ones), param("scale", ones), param("bias", zeros)
    return (x - mean) * (scale * jax.lax.rsqrt(var + _BN_EPS)) + bias


class Conv3D(nn.Module):
  """'same'-padded 3D convolution on (B, T, H, W, C), its kernel (kt, kh, kw, in, out) as a 3D conv's.

  Computed as a 2D convolution over frames whose channels are the kt frames each output frame sees
  (stacked on channels, kernel reshaped to (kh, kw, kt * in, out)): the same sum, but XLA's CPU 2D
  convolution runs the 7x7x7 stem about 6x and the 3x3x3 convs about 2x faster than its 3D one.
  The 'same' padding is TF's (more at the end), as the PyTorch port computes per call.
  """

  features: int
  kernel: tuple[int, int, int]
  strides: tuple[int, int, int] = (1, 1, 1)
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, h, w, c = x.shape
    kt, kh, kw = self.kernel
    st = self.strides[0]
    init = layers.partitioned(nn.initializers.lecun_normal(), ("conv_t", "conv_h", "conv_w", "conv_in", "conv_out"))
    kernel = self.param("kernel", init, (kt, kh, kw, c, self.features), self.param_dtype).astype(self.dtype)
    x = jnp.pad(x, ((0, 0), same_pad(t, kt, st), (0, 0), (0, 0), (0, 0)))
    frames = -(-t // st)
    x = jnp.concatenate([x[:, i:i + st * (frames - 1) + 1:st] for i in range(kt)], axis=-1)  # (B, T', H, W, kt*C)
    kernel = kernel.transpose(1, 2, 0, 3, 4).reshape(kh, kw, kt * c, self.features)
    y = jax.lax.conv_general_dilated(x.reshape(b * frames, h, w, kt * c), kernel, self.strides[1:], "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      bias = self.param("bias", layers.partitioned(nn.initializers.zeros_init(), ("conv_out",)), (self.features,),
                        self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y.reshape(b, frames, *y.shape[1:])


class Unit3D(nn.Module):
  """'same'-padded conv3d (no bias) -> frozen batch norm -> ReLU, on (B, T, H, W, C); `logits` drops the last two."""

  features: int
  kernel: tuple[int, int, int] = (1, 1, 1)
  strides: tuple[int, int, int] = (1, 1, 1)
  logits: bool = False  # the classifier: conv with bias, no norm, no activation
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = Conv3D(features=self.features, kernel=self.kernel, strides=self.strides, use_bias=self.logits,
               dtype=self.dtype, param_dtype=self.param_dtype, name="conv3d")(x)
    if self.logits:
      return x
    return nn.relu(_FrozenBatchNorm(param_dtype=self.param_dtype, name="bn")(x))


class InceptionModule(nn.Module):
  """Four branches concatenated on channels: 1x1 | 1x1, 3x3x3 | 1x1, 3x3x3 | 3x3x3 max pool, 1x1."""

  channels: tuple[int, ...]  # six branch widths, see _MIXED
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.channels

    def unit(i, name, kernel=(1, 1, 1)):
      return Unit3D(features=c[i], kernel=kernel, dtype=self.dtype, param_dtype=self.param_dtype, name=name)

    b0 = unit(0, "b0")(x)
    b1 = unit(2, "b1b", (3, 3, 3))(unit(1, "b1a")(x))
    b2 = unit(4, "b2b", (3, 3, 3))(unit(3, "b2a")(x))
    b3 = unit(5, "b3b")(max_pool_same(x, (3, 3, 3), (1, 1, 1)))
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class I3D(nn.Module):
  """(B, T, H, W, 3) clips in [-1, 1], T >= 9 and H, W >= 193 -> dict(logits (B, classes), pooled (B, 1024 / divisor)).

  At 224 x 224 (the protocol's size) Mixed_5c is (B, ceil(T / 8), 7, 7, 1024); the 2x7x7 average pool
  (stride 1, no padding) leaves (ceil(T / 8) - 1) x 1 x 1 positions, averaged into `pooled`. Larger
  frames leave more spatial positions, which are averaged too (the PyTorch port would return a map).
  """

  config: I3DConfig = I3DConfig()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, videos: jax.Array) -> dict[str, jax.Array]:
    if videos.ndim != 5 or videos.shape[-1] != 3:
      raise InputError("videos", f"shape {videos.shape}, expected (B, T, H, W, 3)", "pass RGB clips channels-last")
    _, t, h, w, _ = videos.shape
    if t < MIN_FRAMES or min(h, w) < MIN_SIZE:
      raise InputError("videos", f"clips of {t} frames of {h}x{w} are too small for I3D's final pooling "
                       f"(at least {MIN_FRAMES} frames of {MIN_SIZE}x{MIN_SIZE})",
                       "resize to the protocol's 224x224 with preprocess_videos")
    kw, width = dict(dtype=self.dtype, param_dtype=self.param_dtype), self.config.width

    def mixed(x, names):
      for name in names:
        x = InceptionModule(tuple(map(width, _MIXED[name])), name=name, **kw)(x)
      return x

    x = videos.astype(self.dtype)
    x = Unit3D(features=width(64), kernel=(7, 7, 7), strides=(2, 2, 2), name="Conv3d_1a_7x7", **kw)(x)
    x = max_pool_same(x, (1, 3, 3), (1, 2, 2))
    x = Unit3D(features=width(64), name="Conv3d_2b_1x1", **kw)(x)
    x = Unit3D(features=width(192), kernel=(3, 3, 3), name="Conv3d_2c_3x3", **kw)(x)
    x = max_pool_same(x, (1, 3, 3), (1, 2, 2))
    x = mixed(x, ("Mixed_3b", "Mixed_3c"))
    x = max_pool_same(x, (3, 3, 3), (2, 2, 2))
    x = mixed(x, ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"))
    x = max_pool_same(x, (2, 2, 2), (2, 2, 2))
    x = mixed(x, ("Mixed_5b", "Mixed_5c"))
    pooled = nn.avg_pool(x, (2, 7, 7), strides=(1, 1, 1), padding="VALID").mean(axis=(1, 2, 3))
    logits = Unit3D(features=self.config.num_classes, logits=True, name="logits", **kw)(pooled[:, None, None, None])
    return dict(logits=logits[:, 0, 0, 0].astype(jnp.float32), pooled=pooled.astype(jnp.float32))


@functools.partial(jax.jit, static_argnums=0)
def i3d_features(config: I3DConfig, params: Mapping[str, Any], videos: jax.Array) -> dict[str, jax.Array]:
  """(B, T, H, W, 3) clips from `preprocess_videos` -> dict(logits (B, classes), pooled (B, 1024)), float32."""
  return I3D(config).apply({"params": params}, videos)


def init_params(config: I3DConfig = I3DConfig(), seed: int = 0) -> dict[str, Any]:
  """Random float32 params for tests and benchmarks (FVD needs converted Kinetics weights).

  Kernels are normal with variance 1 / fan-in (LeCun, untruncated), batch norms the identity, biases zero; drawn
  with numpy, because compiling the init of ~300 params takes minutes on a small CPU.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if path[-1].key == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
    return np.full(leaf.shape, 1.0 if path[-1].key in ("scale", "var") else 0.0, np.float32)

  return jax.tree_util.tree_map_with_path(draw, param_shapes(config))


def param_shapes(config: I3DConfig = I3DConfig()) -> dict[str, Any]:
  """The param tree's shapes, without allocating (the converter's target)."""
  videos = jax.ShapeDtypeStruct((1, MIN_FRAMES, MIN_SIZE, MIN_SIZE, 3), jnp.float32)
  return nn.unbox(jax.eval_shape(I3D(config).init, jax.random.key(0), videos))["params"]


PROTOCOL_SIZE = 224
PROTOCOL_FRAMES = 16


def preprocess_videos(videos: np.ndarray | jax.Array, num_frames: int = PROTOCOL_FRAMES,
                      size: int = PROTOCOL_SIZE) -> jax.Array:
  """uint8 (B, T, H, W, 3) videos -> float32 (B, num_frames, size, size, 3) in [-1, 1]: the FVD protocol's input.

  Protocol (cd-fvd's `preprocess_i3d`, also StyleGAN-V's and TATS'): the first `num_frames` frames
  (16 in Make-Your-Video's and StyleGAN-V's FVD; clips with fewer are refused, never looped), each frame
  resized to size x size (224) with bilinear interpolation at pixel centres and no antialiasing
  (torch's `F.interpolate(mode='bilinear', align_corners=False)`; the aspect ratio is not kept, nothing is
  cropped), then scaled as 2 * x / 255 - 1.
  """
  if videos.ndim != 5 or videos.shape[-1] != 3 or videos.dtype != np.uint8:
    raise InputError("videos", f"{videos.dtype} array of shape {videos.shape}", "pass uint8 RGB videos (B, T, H, W, 3)")
  if videos.shape[1] < num_frames:
    raise InputError("videos", f"{videos.shape[1]} frames, the protocol takes {num_frames}",
                     f"pass clips of at least {num_frames} frames (or set num_frames to the protocol's count)")
  if num_frames < MIN_FRAMES:
    raise InputError("num_frames", f"{num_frames} is below the {MIN_FRAMES} frames I3D's pooling needs",
                     f"use at least {MIN_FRAMES} frames (the protocol uses {PROTOCOL_FRAMES})")
  return _preprocess(jnp.asarray(videos[:, :num_frames]), size)


@functools.partial(jax.jit, static_argnums=1)
def _preprocess(videos: jax.Array, size: int) -> jax.Array:
  b, t, _, _, c = videos.shape
  resized = jax.image.resize(videos.astype(jnp.float32), (b, t, size, size, c), method="linear", antialias=False)
  return 2.0 * resized / 255.0 - 1.0
