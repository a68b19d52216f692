"""Block-local causal temporal attention (CausalBand): exact, causal, and memory linear in the frame count."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidjax.models import layers
from vidjax.models.attention import Attention, CausalBand
from vidjax.models.temporal import TemporalTransformer
from vidjax.models.unet import UNetConfig, VideoUNet, init_inputs

C = 4  # relative-position clip distance = block size


def _perturbed(params, seed, scale=0.1):
  """Unboxed params plus noise, so zero-initialised layers (proj_out) take part."""
  leaves, tree = jax.tree_util.tree_flatten(nn.meta.unbox(params))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return tree.unflatten([v + scale * jax.random.normal(k, v.shape, v.dtype) for v, k in zip(leaves, keys)])


def _shaw_reference(params, x, window):
  """Masked self-attention with Shaw et al. relative keys and values, in float64 numpy, one (T, T) mask."""
  p = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), params["params"])
  x = np.asarray(x, np.float64)
  b, t, _ = x.shape
  head_dim = p["relative_position_k"].shape[1]
  heads = p["to_q"]["kernel"].shape[1] // head_dim
  q, k, v = ((x @ p[name]["kernel"]).reshape(b, t, heads, head_dim) for name in ("to_q", "to_k", "to_v"))
  i, j = np.arange(t)[:, None], np.arange(t)[None, :]
  index = np.clip(j - i, -C, C) + C
  logits = (np.einsum("bqnh,bknh->bnqk", q, k)
            + np.einsum("bqnh,qkh->bnqk", q, p["relative_position_k"][index])) / np.sqrt(head_dim)
  logits = np.where((j <= i) & (i - j < window), logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  out = np.einsum("bnqk,bknh->bqnh", probs, v) + np.einsum("bnqk,qkh->bqnh", probs, p["relative_position_v"][index])
  return out.reshape(b, t, heads * head_dim) @ p["to_out_0"]["kernel"] + p["to_out_0"]["bias"]


def test_band_matches_a_numpy_reference_of_masked_shaw_attention():
  """11 frames = 3 blocks of 4 (one padded frame); windows up to C + 1 are exact, larger ones act as C + 1."""
  attention = Attention(heads=2, head_dim=8, relative_position=C)
  x = jax.random.normal(jax.random.key(0), (3, 11, 16))
  params = _perturbed(attention.init(jax.random.key(1), x), seed=2)
  apply = jax.jit(lambda v, w: attention.apply(params, v, band=CausalBand(window=w, block=C)))
  for window in range(1, C + 2):
    np.testing.assert_allclose(np.asarray(apply(x, window)), _shaw_reference(params, x, window), atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(apply(x, 9)), _shaw_reference(params, x, C + 1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("frames", [8, 11])  # a whole number of blocks, and one padded frame
def test_banded_temporal_transformer_equals_the_full_mask(frames):
  """The same params through CausalBand blocks and through one (T, T) mask, for every exact window."""
  kw = dict(heads=2, head_dim=8, num_groups=4, relative_position=C, causal=True)
  banded, full = TemporalTransformer(**kw), TemporalTransformer(**kw, block_local=False)
  x = jax.random.normal(jax.random.key(0), (2, frames, 2, 3, 16))
  params = _perturbed(banded.init(jax.random.key(1), x, window=3), seed=2)
  apply_banded = jax.jit(lambda v, w: banded.apply(params, v, window=w))
  apply_full = jax.jit(lambda v, w: full.apply(params, v, window=w))
  for window in range(1, C + 2):
    ours, ref = np.asarray(apply_banded(x, window)), np.asarray(apply_full(x, window))
    assert np.abs(ref).max() > 1e-2  # the residual branch is not trivially zero
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_unet_frame_sees_only_its_two_stacked_windows_on_a_long_clip():
  """A one-level VideoUNet on 10 frames (banded: 10 > C) with L_M = 3.

  Only the first temporal transformer is perturbed; the others keep their zero proj_out and add
  exactly nothing, and every spatial layer works frame by frame. Frame i then depends on frames
  i - 2 (L_M - 1) .. i only (the block's two masked attentions). Permuting a run of frames keeps the
  temporal GroupNorm's statistics (over T), so outside that range nothing may change.
  """
  config = UNetConfig(in_channels=4, out_channels=4, block_out_channels=(8,), layers_per_block=1,
                      attention_levels=(True,), num_attention_heads=(2,), cross_attention_dim=8, norm_num_groups=4,
                      temporal_attention=True, temporal_relative_position=C, temporal_causal=True)
  unet = VideoUNet(config)
  params = nn.meta.unbox(jax.jit(unet.init)(layers.init_key(jax.random.key(0)), **init_inputs(config, frames=2)))["params"]
  down = params["down_blocks_0"]
  first_temporal = _perturbed(down["temporal_attentions_0"], seed=1)
  params = {**params, "down_blocks_0": {**down, "temporal_attentions_0": first_temporal}}
  rng = np.random.default_rng(0)
  latents = rng.standard_normal((1, 10, 4, 4, 4)).astype(np.float32)
  context = rng.standard_normal((1, 3, 8)).astype(np.float32)
  traces = []

  @jax.jit
  def apply(video, window):
    traces.append(window)  # runs once per trace
    return unet.apply({"params": params}, video, jnp.array([500]), context, temporal_window=window)

  def changes_at(i, frames, window):
    """Largest change of frame i's output when the frames in the slice are reversed."""
    reversed_run = latents.copy()
    reversed_run[:, frames] = latents[:, frames][:, ::-1]
    return np.abs(np.asarray(apply(reversed_run, window))[:, i] - np.asarray(apply(latents, window))[:, i]).max()

  window, i = 3, 7
  reach = 2 * (window - 1)
  assert changes_at(i, slice(i + 1, 10), window) < 1e-5  # the future
  assert changes_at(i, slice(0, i - reach), window) < 1e-5  # beyond the receptive field
  assert changes_at(i, slice(i - reach - 1, i - reach + 1), window) > 1e-3  # frame i - reach is inside it
  assert changes_at(i, slice(0, i - reach), C + 1) > 1e-3  # a wider window reaches them
  assert len(traces) == 1  # the window is traced: changing it did not recompile


def _temp_bytes(block_local: bool, frames: int) -> int:
  """XLA's temporary buffer size for one TemporalTransformer forward pass (window 4, C 4, 16 pixels)."""
  block = TemporalTransformer(heads=2, head_dim=8, num_groups=4, relative_position=C, causal=True,
                              block_local=block_local)
  x = jax.ShapeDtypeStruct((1, frames, 4, 4, 8), jnp.float32)
  params = jax.eval_shape(lambda: nn.meta.unbox(block.init(jax.random.key(0), jnp.zeros(x.shape), window=4)))
  apply = jax.jit(lambda p, v, w: block.apply(p, v, window=w))
  compiled = apply.lower(params, x, jax.ShapeDtypeStruct((), jnp.int32)).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_banded_memory_grows_linearly_with_frames_where_the_full_mask_grows_quadratically():
  """Second differences of temp memory at T = 16, 32, 64: 2 for linear growth, 4 for purely quadratic."""
  banded = [_temp_bytes(True, t) for t in (16, 32, 64)]
  full = [_temp_bytes(False, t) for t in (16, 32, 64)]
  growth = lambda m: (m[2] - m[1]) / (m[1] - m[0])
  assert 1.5 <= growth(banded) <= 2.5, banded
  assert growth(full) > 3.0, full  # the measure can tell: the (T, T) path is clearly superlinear
  assert banded[2] < full[2] / 2, (banded, full)
