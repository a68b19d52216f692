"""UNetConfig.remat: rematerialising the blocks changes memory, not numbers (outputs, gradients, param tree)."""

from __future__ import annotations

import dataclasses

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from vidjax.convert import pretrained
from vidjax.models.unet import UNetConfig, VideoUNet

# The smallest UNet with every kind of block remat wraps (down, mid, up) and the temporal layers' state
# (TemporalInfo's gate) passing through them; odd sizes (3 frames, 7 x 5 latents) catch shape mix-ups.
CONFIG = UNetConfig(in_channels=5, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                    attention_levels=(False, True), num_attention_heads=(1, 2), cross_attention_dim=12,
                    norm_num_groups=4, temporal_conv="conv1d", temporal_attention=True, temporal_max_frames=3)


def _inputs():
  rng = np.random.default_rng(0)
  return dict(latents=rng.standard_normal((2, 3, 7, 5, 5)).astype(np.float32), timesteps=np.array([10, 600]),
              context=rng.standard_normal((2, 2, 12)).astype(np.float32), video_gate=np.array([1.0, 0.5], np.float32))


def _loss_and_grads(config):
  """f(params, context, inputs) -> ((loss, UNet output), (d loss / d params, d loss / d context)), the loss a
  fixed random readout of the output."""
  unet = VideoUNet(config)
  readout = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3, 7, 5, 4)), jnp.float32)

  def loss(params, context, inputs):
    out = unet.apply({"params": params}, inputs["latents"], inputs["timesteps"], context,
                     video_gate=inputs["video_gate"])
    return jnp.sum(out * readout), out

  return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)


@pytest.fixture(scope="module")
def params():
  # Random everywhere (zero-initialised temporal projections would hide the temporal layers' gradients).
  rng = np.random.default_rng(2)
  draw = lambda s: (rng.standard_normal(s.shape) * 0.2).astype(np.float32)
  return jax.tree.map(draw, pretrained.param_shapes(CONFIG))


def test_remat_gives_the_same_param_tree_outputs_and_gradients(params):
  remat = dataclasses.replace(CONFIG, remat=True)
  # One checkpoint serves both: the block names do not change under nn.remat.
  assert jax.tree.structure(pretrained.param_shapes(remat)) == jax.tree.structure(params)
  inputs = _inputs()
  (_, plain_out), (plain_grads, plain_context) = jax.jit(_loss_and_grads(CONFIG))(params, inputs["context"], inputs)
  (_, remat_out), (remat_grads, remat_context) = jax.jit(_loss_and_grads(remat))(params, inputs["context"], inputs)
  assert np.abs(np.asarray(plain_out)).max() > 0.1
  np.testing.assert_allclose(np.asarray(remat_out), np.asarray(plain_out), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(remat_context), np.asarray(plain_context), rtol=1e-5, atol=1e-6)
  flat_plain = jax.tree_util.tree_flatten_with_path(plain_grads)[0]
  temporal = [g for path, g in flat_plain if "temporal" in (name := jax.tree_util.keystr(path)) and "kernel" in name]
  assert temporal and all(np.abs(np.asarray(g)).max() > 0 for g in temporal)  # compared below, and not all zero
  for (path, a), b in zip(flat_plain, jax.tree.leaves(remat_grads)):
    scale = np.abs(np.asarray(a)).max()
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6 * max(scale, 1.0),
                               err_msg=jax.tree_util.keystr(path))


def _checkpointed_calls(jaxpr) -> int:
  """How many rematerialised (jax.checkpoint) calls a jaxpr holds, nested ones included."""
  calls = 0
  for eqn in jaxpr.eqns:
    calls += eqn.primitive.name in ("checkpoint", "remat2")  # the primitive's name across jax versions
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      calls += _checkpointed_calls(sub)
  return calls


def test_remat_really_rematerialises_every_block(params):
  """Only the remat config's backward pass holds checkpointed calls: one per down, mid and up block."""
  inputs = _inputs()
  count = lambda config: _checkpointed_calls(jax.make_jaxpr(_loss_and_grads(config))(
      params, inputs["context"], inputs).jaxpr)
  assert count(CONFIG) == 0
  assert count(dataclasses.replace(CONFIG, remat=True)) == 2 + 1 + 2  # 2 down, 1 mid, 2 up blocks
