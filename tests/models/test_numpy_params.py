"""Params as numpy arrays (what the checkpoint loader returns) work closed over inside jax.jit."""

import jax
import numpy as np
import pytest

from vidjax.convert import pretrained
from vidjax.models.unet import UNetConfig, VideoUNet

FRAMES = 5  # > the relative-position distance 3, so the causal window runs block by block too


def _numpy_params(config: UNetConfig) -> dict:
  """Random float32 numpy params of the model's shapes, as `pretrained.load_pretrained` returns them."""
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: (rng.standard_normal(s.shape) * 0.1).astype(np.float32),
                      pretrained.param_shapes(config))


# window 2 runs the block-wise band (keys offset by a block); None the one (T, T) mask. Each compiles twice (~10 s).
@pytest.mark.parametrize("window", [2, pytest.param(None, marks=pytest.mark.slow)])
def test_numpy_params_closed_over_in_jit_equal_params_passed_as_arguments(window):
  # Make-Your-Video style: pseudo-3D temporal convs, temporal attention with relative positions and a causal mask.
  config = UNetConfig(in_channels=5, out_channels=4, block_out_channels=(8,), layers_per_block=1,
                      attention_levels=(True,), num_attention_heads=(2,), cross_attention_dim=16,
                      norm_num_groups=4, temporal_conv="pseudo3d", temporal_attention=True,
                      temporal_relative_position=3, temporal_causal=True)
  params = {"params": _numpy_params(config)}
  tables = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
            if "relative_position_k" in jax.tree_util.keystr(path)]
  assert tables and all(isinstance(t, np.ndarray) for t in tables)
  unet = VideoUNet(config)
  rng = np.random.default_rng(1)
  latents = rng.standard_normal((1, FRAMES, 3, 5, 5)).astype(np.float32)
  context = rng.standard_normal((1, 3, 16)).astype(np.float32)
  timesteps = np.asarray([500], np.int32)

  passed = jax.jit(lambda p, x: unet.apply(p, x, timesteps, context, temporal_window=window))(params, latents)
  closed = jax.jit(lambda x: unet.apply(params, x, timesteps, context, temporal_window=window))(latents)
  np.testing.assert_allclose(np.asarray(closed), np.asarray(passed), rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(passed)).max() > 1e-3  # a real output, not zeros
