"""The analytic UNet FLOP count against XLA's cost analysis of the compiled forward (and backward).

XLA's `cost_analysis()['flops']` counts the same convolutions (valid taps only) and dots as the
analytic count, plus one FLOP per element of every elementwise op (norms, SiLU/GELU, softmax,
residual adds, biases), which the analytic count leaves out by design. So analytic / XLA must be
at most 1 (above 1 means something is counted that does not run) and, on this tiny config, above
0.85: the elementwise share is ~8-10% here (channels 32-64, so few MACs per element); missing a
whole component (attention, a temporal conv kind, the cross-attention keys) drops the ratio out of
the window, and the temporal layers and relative-position terms are checked on their own deltas
because they are too small a share of the total to show in it. Programs are only compiled (params
and inputs are abstract shapes), never run.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from vidjax.convert.diffusers_unet import unet_param_shapes
from vidjax.models.flops import unet_forward_flops, unet_train_flops
from vidjax.models.unet import UNetConfig, VideoUNet

# Odd latent (13x11, rounded up by the stride-2 convs), 3 levels with a non-attention level,
# different head counts per level, 5 input channels.
TINY = UNetConfig(in_channels=5, block_out_channels=(32, 48, 64), layers_per_block=1,
                  attention_levels=(True, True, False), num_attention_heads=(2, 3, 4), cross_attention_dim=64,
                  norm_num_groups=8)
VARIANTS = {
    "image": TINY,
    "gen1": dataclasses.replace(TINY, temporal_conv="conv1d", temporal_attention=True, temporal_max_frames=8),
    "myv": dataclasses.replace(TINY, temporal_conv="pseudo3d", temporal_attention=True,
                               temporal_relative_position=4, temporal_causal=True),
}
VARIANTS["myv_no_relative"] = dataclasses.replace(VARIANTS["myv"], temporal_relative_position=0)
SIZES = dict(batch=2, frames=4, height=13, width=11, context_length=77)
ELEMENTWISE_BOUND = 0.85  # analytic / XLA lies in [this, 1.0]; see the module docstring


def _xla_flops(config: UNetConfig, *, image_mode: bool, train: bool, context_length: int, frames: int | None = None,
               temporal_window: int | None = None) -> float:
  """XLA's FLOP count for the compiled forward (or gradient of an MSE loss w.r.t. params) at SIZES."""
  b, h, w = (SIZES[k] for k in ("batch", "height", "width"))
  t = frames or SIZES["frames"]
  forward = lambda p, x, ts, ctx: VideoUNet(config).apply({"params": p}, x, ts, ctx, image_mode=image_mode,
                                                          temporal_window=temporal_window)
  fn = jax.grad(lambda *args: jnp.mean(forward(*args) ** 2)) if train else forward
  args = (unet_param_shapes(config), jax.ShapeDtypeStruct((b, t, h, w, config.in_channels), jnp.float32),
          jax.ShapeDtypeStruct((b,), jnp.int32),
          jax.ShapeDtypeStruct((b, context_length, config.cross_attention_dim), jnp.float32))
  # LLVM optimisation level 0 halves compile time; the count comes from the optimised HLO, which it leaves alone.
  analysis = jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0}).cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis["flops"])


@pytest.fixture(scope="module")
def xla_flops():
  cache = {}

  def get(variant: str, *, train: bool = False, context_length: int = SIZES["context_length"]) -> float:
    """Video mode for temporal variants, image mode for 'image'."""
    key = (variant, train, context_length)
    if key not in cache:
      cache[key] = _xla_flops(VARIANTS[variant], image_mode=variant == "image", train=train,
                              context_length=context_length)
    return cache[key]

  return get


def _analytic(variant: str, image_mode: bool = False, temporal_window: int | None = None, **sizes) -> int:
  return unet_forward_flops(VARIANTS[variant], **{**SIZES, **sizes}, image_mode=image_mode or variant == "image",
                            temporal_window=temporal_window)


@pytest.mark.parametrize("variant", ["image", "gen1", "myv"])
def test_forward_count_is_xla_count_less_elementwise(xla_flops, variant):
  ratio = _analytic(variant) / xla_flops(variant)
  assert ELEMENTWISE_BOUND <= ratio <= 1.0, ratio


@pytest.mark.parametrize("variant", ["gen1", "myv"])
def test_temporal_layers_count(xla_flops, variant):
  """Video minus image mode isolates the temporal layers (convs, temporal transformers)."""
  analytic = _analytic(variant) - _analytic(variant, image_mode=True)
  assert analytic > 0
  ratio = analytic / (xla_flops(variant) - xla_flops("image"))
  assert 0.8 <= ratio <= 1.0, ratio


def test_relative_position_terms_count(xla_flops):
  """Make-Your-Video's relative keys and values: two extra (T, T) products per temporal attention."""
  analytic = _analytic("myv") - _analytic("myv_no_relative")
  assert analytic > 0
  ratio = analytic / (xla_flops("myv") - xla_flops("myv_no_relative"))
  assert 0.8 <= ratio <= 1.0, ratio


def test_banded_temporal_attention_counts_blocks_not_the_whole_clip():
  """13 frames in blocks of C = 4 under a causal window: 4 padded blocks of (4, 8) logits, not (13, 13).

  The delta against the full (T, T) path (no window) isolates the temporal attention products.
  """
  config, long = VARIANTS["myv"], dict(frames=13)
  banded, full = _analytic("myv", **long, temporal_window=3), _analytic("myv", **long)
  assert banded < full
  ratio = (full - banded) / (_xla_flops(config, image_mode=False, train=False, context_length=77, frames=13)
                             - _xla_flops(config, image_mode=False, train=False, context_length=77, frames=13,
                                          temporal_window=3))
  assert 0.8 <= ratio <= 1.0, ratio
  assert _analytic("myv", temporal_window=3) == _analytic("myv")  # 4 frames = C: one (T, T) mask, as the model


def test_cross_attention_context_count(xla_flops):
  """Longer context: more cross-attention key/value projections and QK^T, PV columns."""
  analytic = _analytic("image") - _analytic("image", context_length=7)
  assert analytic > 0
  ratio = analytic / (xla_flops("image") - xla_flops("image", context_length=7))
  assert 0.8 <= ratio <= 1.0, ratio


def test_train_count_is_three_forwards(xla_flops):
  """Backward = 2 products per forward matmul; XLA skips conv_in's input gradient and adds elementwise."""
  ratio = unet_train_flops(TINY, **SIZES) / xla_flops("image", train=True)
  assert ELEMENTWISE_BOUND <= ratio <= 1.0, ratio


@pytest.mark.parametrize("variant", ["image", "gen1", "myv"])
def test_count_is_linear_in_batch(variant):
  assert _analytic(variant, batch=4) == 2 * _analytic(variant, batch=2)


def test_a_model_without_temporal_layers_counts_the_same_in_image_mode():
  assert _analytic("image", image_mode=True) == unet_forward_flops(TINY, **SIZES, image_mode=False)
