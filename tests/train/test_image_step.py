"""Gen-1's train step on image content (the frozen CLIP tower embeds a frame inside the step) and in image
mode (image batches of joint image-video training skip the temporal layers).

One state of random numpy params (no init compiled; temporal layers random too, so their gradients are
not zero by construction) and one compiled step per mode, shared by every assertion.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import tiny_config
from vidjax.convert import pretrained
from vidjax.train import loop
from vidjax.train import state as state_lib
from vidjax.train.step import make_train_step
from vidjax.tree import flatten, unflatten


@pytest.fixture(scope="module")
def gen1_step():
  """(model, jitted step(state, batch, image_mode), state) of tiny_config's video model on CLIP image content,
  training its temporal layers only: the step's grad_norm is then the temporal gradients' norm."""
  config = tiny_config.tiny_config(**{"model.content": "image", "train.object_loss_weight": 0.0,
                                      "train.content_dropout": 0.0, "train.trainable": ("unet/.*temporal_.*",)})
  config.model.image_encoder.update(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                                    image_size=16, patch_size=8, projection_dim=16)
  model = loop.build_model(config)
  rng = np.random.default_rng(0)
  params = {name: jax.tree.map(lambda s: (rng.standard_normal(s.shape) * 0.1).astype(np.float32),
                               pretrained.param_shapes(getattr(model.config, name)))
            for name in ("unet", "vae", "image_encoder")}
  labels = state_lib.trainable_labels(params, config.train.trainable)
  tx = state_lib.make_optimizer(config.train, labels)
  state = jax.device_get(state_lib.create_state(lambda _: params, tx, labels, jax.random.key(0)))
  return model, jax.jit(make_train_step(model, tx, labels, config.train), static_argnums=2), state


def _batch(frames, seed=0):
  """Loader-like frames (no cached latents or embeddings: the step runs the VAE and CLIP), depth, t_s."""
  rng = np.random.default_rng(seed)
  return {"frames": rng.uniform(-1, 1, (2, frames, 16, 16, 3)).astype(np.float32),
          "depth": rng.uniform(0, 1, (2, frames, 16, 16, 1)).astype(np.float32),
          "structure_fidelity": np.zeros((2,), np.int32)}


def _changed(state, select):
  """`state` with each param whose '/'-joined path `select` accepts scaled elementwise by factors in [-1, 3].

  Elementwise and with sign flips, not by one factor: a layer norm after a uniformly scaled linear layer
  undoes the scale, and a scale of 1.5 left the loss within 3e-7 of itself (relative) once the content
  passed through the CLIP tower; these factors move it by ~2e-5, 20x the tests' threshold.
  """
  flat = flatten(state.params)
  assert any(select("/".join(p)) for p in flat)
  rng = np.random.default_rng(0)
  scale = lambda v: v * rng.uniform(-1.0, 3.0, np.shape(v)).astype(np.asarray(v).dtype)
  return state.replace(params=unflatten({p: scale(v) if select("/".join(p)) else v for p, v in flat.items()}))


def _loss_and_grad_norm(step, state, batch, image_mode):
  _, metrics = step(state, batch, image_mode)
  return float(metrics["loss"]), float(metrics["grad_norm"])


def test_image_content_the_loss_depends_on_the_clip_embedding_of_the_clips_frames(gen1_step):
  model, step, state = gen1_step
  batch = _batch(frames=3)
  loss, grad_norm = _loss_and_grad_norm(step, state, batch, False)
  assert np.isfinite(loss) and grad_norm > 0  # video mode: the temporal layers learn
  # Another CLIP tower, another embedding of the same frames, another loss ...
  other_tower = _changed(state, lambda p: p.startswith("image_encoder/"))
  assert abs(_loss_and_grad_norm(step, other_tower, batch, False)[0] - loss) > 1e-6 * abs(loss)
  # ... while params the step never uses (training never decodes) leave it bit for bit: the change is the content's.
  unused = _changed(state, lambda p: p.startswith("vae/decoder/"))
  assert _loss_and_grad_norm(step, unused, batch, False)[0] == loss


def test_image_mode_skips_the_temporal_layers_so_they_get_zero_gradient(gen1_step):
  model, step, state = gen1_step
  images = _batch(frames=1)
  loss, grad_norm = _loss_and_grad_norm(step, state, images, True)
  assert np.isfinite(loss) and grad_norm == 0.0  # every temporal param's gradient is exactly zero
  # Forward: the temporal params do not enter the loss, the spatial ones and the CLIP content do.
  temporal = _changed(state, lambda p: p.startswith("unet/") and "temporal_" in p)
  assert _loss_and_grad_norm(step, temporal, images, True)[0] == loss
  spatial = _changed(state, lambda p: p.startswith("unet/") and "attn2" in p and "temporal_" not in p)
  assert abs(_loss_and_grad_norm(step, spatial, images, True)[0] - loss) > 1e-6 * abs(loss)
  other_tower = _changed(state, lambda p: p.startswith("image_encoder/"))
  assert abs(_loss_and_grad_norm(step, other_tower, images, True)[0] - loss) > 1e-6 * abs(loss)
