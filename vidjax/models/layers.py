"""Primitive layers shared by every model: partitioned dense/conv, norms, timestep embedding, resampling.

Every parameter carries logical axis names (`nn.with_logical_partitioning`); `vidjax.parallel`
maps them to mesh axes with the rules in the config. Layouts are channels-last; image layers act
on (N, H, W, C), and `per_frame` applies them to every frame of a (B, T, H, W, C) video.

Logical axis names used for parameters:
  'embed'        feature width of a transformer / dense layer input (sharded by FSDP rules)
  'mlp', 'heads' expanded width (feed-forward hidden, attention projections)
  'conv_in', 'conv_out' conv kernel channels; 'conv_h', 'conv_w', 'conv_t' kernel taps
  'norm'         norm scales and biases (small: replicated)
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.extend.random
import jax.numpy as jnp

Dtype = Any
_DEFAULT_KERNEL_INIT = nn.initializers.lecun_normal()


def _mix(x: jax.Array) -> jax.Array:
  """murmur3's 32-bit finalizer: a bijection on uint32 whose every output bit depends on every input bit."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def _hash(counter: jax.Array, key: jax.Array) -> jax.Array:
  """uint32 bits of (counter, 2-word key): two keyed finalizer rounds. Distinct counters give distinct bits."""
  return _mix(_mix(counter ^ key[0]) + key[1])


def _hash_seed(seed: jax.Array) -> jax.Array:
  seed = jnp.asarray(seed).astype(jnp.uint32)
  return jnp.stack([_mix(seed ^ jnp.uint32(0x9E3779B9)), _mix(seed + jnp.uint32(0x632BE59B))])


def _hash_split(key: jax.Array, shape: Sequence[int]) -> jax.Array:
  return _hash(jax.lax.iota(jnp.uint32, 2 * math.prod(shape)), key).reshape(*shape, 2)


def _hash_fold_in(key: jax.Array, data: jax.Array) -> jax.Array:
  # Another domain than split's (the key's words flipped by constants), so fold_in(key, i) is not
  # split(key)[i]: Flax derives param keys by both.
  counter = 2 * jnp.asarray(data).astype(jnp.uint32) + jnp.arange(2, dtype=jnp.uint32)
  return _hash(counter, key ^ jnp.array([0x3C6EF372, 0xA54FF53A], jnp.uint32))


def _hash_random_bits(key: jax.Array, bit_width: int, shape: Sequence[int]) -> jax.Array:
  counter = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
  if bit_width not in (8, 16, 32):  # 64 bits are asked for 64-bit dtypes only, which init never uses
    raise TypeError(f"random bits of width {bit_width}: the init generator gives 8, 16 or 32")
  return (_hash(counter, key) >> (32 - bit_width)).astype(jnp.dtype(f"uint{bit_width}"))


# A counter-based generator for initial weights only (training noise and dropout keep threefry). XLA's
# CPU compile of an init program costs per param, and most of it is the generator: threefry's hash, or
# RngBitGenerator's Philox expansion, unrolled once per param. Two finalizer rounds over an iota compile
# to one small fusion: 100 truncated-normal draws of distinct shapes compile in 7.5 s of CPU against
# 26 s with 'unsafe_rbg', and the tests' tiny training state (502 params) inits in 20.5 s against 33 s
# with 'rbg' (2-core Zen 3, XLA at optimization level 0); the main job's toy state in 32.9 s wall against
# 52.6 s at XLA's default level. Being elementwise in the counter, a draw
# partitions like its output, so a sharded init gives every device its shard of the same values.
INIT_RNG = jax.extend.random.define_prng_impl(
    key_shape=(2,), seed=_hash_seed, split=_hash_split, random_bits=_hash_random_bits,
    fold_in=_hash_fold_in, name="vidjax_init_hash", tag="vjh")


def init_key(key: jax.Array) -> jax.Array:
  """The key to pass to a model's `init`: a threefry key's bits as an `INIT_RNG` key.

  Flax derives each param's key from it as usual; only the generator differs (see `INIT_RNG`).
  """
  return jax.random.wrap_key_data(jax.random.key_data(key), impl=INIT_RNG)


def partitioned(init, names: Sequence[str | None]):
  """Attaches logical axis names to an initializer."""
  return nn.with_logical_partitioning(init, tuple(names))


def per_frame(fn: Callable[..., jax.Array], module: nn.Module, *videos: jax.Array,
              shared: Sequence[jax.Array | None] = ()) -> jax.Array:
  """`fn(module, *frames, *shared)` on every frame of the videos, with one set of parameters for all frames.

  Args:
    fn: builds image layers inline (as in an `nn.compact` method) on (B, H, W, C) frames and
      (B, ...) per-video inputs; its layers are `module`'s children, at the parameter paths they
      would have on images.
    module: the module whose scope holds the layers (usually `self`).
    videos: (B, T, ...) arrays, split along T: each call sees frame t of every video.
    shared: (B, ...) arrays (or None) that every frame of a video sees whole (a timestep embedding,
      text tokens).
  Returns:
    (B, T, ...): fn's output for each frame.

  This is `nn.vmap` over T with the parameters broadcast (`variable_axes={'params': None}`), so image
  mode and video mode share every weight by construction; dropout draws per frame. The map runs on
  frames-first (T, B, ...) views, and `shared` inputs are broadcast to every frame rather than left
  unmapped: that is what keeps the compiled program the one that folds frames into the batch by
  reshape. Mapping axis 1 directly makes JAX's conv batching rule put T before B (a transpose of the
  activation at every call), and unmapped operands, or batches of one image under a map over both B
  and T, give XLA:CPU's batched dots extra layout copies. The (B, T) <-> (T, B) swaps around
  consecutive calls cancel out.
  """
  frames_first = lambda v: jnp.swapaxes(v, 0, 1)
  num_frames = videos[0].shape[1]
  per_frame_inputs = tuple(None if v is None else jnp.broadcast_to(v, (num_frames,) + v.shape) for v in shared)
  mapped = nn.vmap(fn, in_axes=0, out_axes=0, variable_axes={"params": None},
                   split_rngs={"params": False, "dropout": True})
  return frames_first(mapped(module, *map(frames_first, videos), *per_frame_inputs))


def dense(features: int, *, names=("embed", "mlp"), use_bias=True, zero_init=False, dtype=jnp.float32,
          param_dtype=jnp.float32, name=None) -> nn.Dense:
  """A Dense layer whose kernel (in, out) and bias (out,) carry logical axis names."""
  kernel_init = nn.initializers.zeros_init() if zero_init else _DEFAULT_KERNEL_INIT
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
                  kernel_init=partitioned(kernel_init, names),
                  bias_init=partitioned(nn.initializers.zeros_init(), names[-1:]))


def conv(features: int, kernel_size: Sequence[int] = (3, 3), *, strides=1, padding="SAME", use_bias=True,
         zero_init=False, dtype=jnp.float32, param_dtype=jnp.float32, name=None) -> nn.Conv:
  """A 2D (or 1D/3D by kernel rank) convolution with logical axis names, channels-last.

  `padding` follows flax: 'SAME', 'VALID' or explicit ((lo, hi), ...) pairs, which is how the
  PyTorch symmetric `padding=1` (and the VAE's asymmetric (0, 1) downsample pad) are expressed.
  """
  taps = {1: ("conv_t",), 2: ("conv_h", "conv_w"), 3: ("conv_t", "conv_h", "conv_w")}[len(kernel_size)]
  kernel_init = nn.initializers.zeros_init() if zero_init else _DEFAULT_KERNEL_INIT
  return nn.Conv(features, tuple(kernel_size), strides=strides, padding=padding, use_bias=use_bias, dtype=dtype,
                 param_dtype=param_dtype, name=name,
                 kernel_init=partitioned(kernel_init, taps + ("conv_in", "conv_out")),
                 bias_init=partitioned(nn.initializers.zeros_init(), ("conv_out",)))


def group_norm(num_groups: int, epsilon: float, *, dtype=jnp.float32, param_dtype=jnp.float32, name=None):
  """GroupNorm over all non-batch axes per group, as torch.nn.GroupNorm (statistics in float32)."""
  return nn.GroupNorm(num_groups=num_groups, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name,
                      scale_init=partitioned(nn.initializers.ones_init(), ("norm",)),
                      bias_init=partitioned(nn.initializers.zeros_init(), ("norm",)))


def layer_norm(epsilon: float = 1e-5, *, dtype=jnp.float32, param_dtype=jnp.float32, name=None):
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name,
                      scale_init=partitioned(nn.initializers.ones_init(), ("norm",)),
                      bias_init=partitioned(nn.initializers.zeros_init(), ("norm",)))


def timestep_embedding(timesteps: jax.Array, dim: int, *, flip_sin_to_cos: bool = True,
                       downscale_freq_shift: float = 0.0, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding of (N,) timesteps -> (N, dim) float32, as diffusers' `Timesteps`.

  freq_i = exp(-log(max_period) * i / (dim/2 - shift)); output [sin | cos], or [cos | sin] when flipped
  (SD and LVDM use the flipped order).
  """
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - downscale_freq_shift)
  args = jnp.asarray(timesteps, jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if flip_sin_to_cos:
    emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class TimestepMLP(nn.Module):
  """linear -> SiLU -> linear on a timestep embedding (diffusers `TimestepEmbedding`)."""

  features: int
  zero_init_out: bool = False  # the second linear starts at zero (an added embedding that starts as a no-op)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, emb: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    emb = dense(self.features, names=("embed", "mlp"), name="linear_1", **kw)(emb)
    return dense(self.features, names=("mlp", "embed"), zero_init=self.zero_init_out, name="linear_2",
                 **kw)(nn.silu(emb))


class Downsample(nn.Module):
  """3x3 conv at stride 2 on (N, H, W, C).

  `asymmetric_pad` pads (0, 1) on H and W before a VALID conv, as the SD VAE encoder does; otherwise
  symmetric padding 1 as the UNet does. Odd sizes give ceil(H / 2) (symmetric) or floor(H / 2) (asymmetric).
  """

  features: int
  asymmetric_pad: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    padding = ((0, 1), (0, 1)) if self.asymmetric_pad else ((1, 1), (1, 1))
    return conv(self.features, strides=2, padding=padding, dtype=self.dtype, param_dtype=self.param_dtype,
                name="conv")(x)


class Upsample(nn.Module):
  """Nearest-neighbour 2x (or to `output_hw`, for odd skip sizes) then a 3x3 conv, on (N, H, W, C)."""

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, output_hw: tuple[int, int] | None = None) -> jax.Array:
    n, h, w, c = x.shape
    out_h, out_w = output_hw or (2 * h, 2 * w)
    # Nearest as torch F.interpolate(mode='nearest'): source index floor(i * in / out).
    rows = (jnp.arange(out_h) * h) // out_h
    cols = (jnp.arange(out_w) * w) // out_w
    x = x[:, rows][:, :, cols]
    return conv(self.features, padding=((1, 1), (1, 1)), dtype=self.dtype, param_dtype=self.param_dtype,
                name="conv")(x)
