"""Surgery: change_context_width re-initialises exactly the spatial cross-attention key/value kernels, and
the trainer's `init_from` + `init_surgery` (loop._init_from) adapts a source checkpoint as the stages need."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_config
from vidjax.convert import pretrained
from vidjax.errors import ConfigError
from vidjax.parallel import sharding as sharding_lib
from vidjax.train import loop, surgery
from vidjax.train import state as state_lib
from vidjax.tree import flatten


def _unet_params(width):
  rng = np.random.default_rng(0)
  attn2 = lambda: {"to_q": {"kernel": rng.standard_normal((8, 8))}, "to_k": {"kernel": rng.standard_normal((width, 8))},
                   "to_v": {"kernel": rng.standard_normal((width, 8))},
                   "to_out_0": {"kernel": rng.standard_normal((8, 8)), "bias": np.zeros(8)}}
  return {"conv_in": {"kernel": rng.standard_normal((3, 3, 4, 8))},
          "down_blocks_0": {"attentions_0": {"blocks_0": {"attn2": attn2(), "attn1": attn2()}},
                            "temporal_attentions_0": {"blocks_0": {"attn2": attn2()}}}}


def test_change_context_width_reinitialises_only_spatial_cross_attention_keys_and_values():
  before = _unet_params(7)
  after = flatten(surgery.change_context_width(before, 11, jax.random.key(0), scale=0.02))
  before = flatten(before)
  changed = {p for p in before if np.shape(before[p]) != np.shape(after[p]) or not np.array_equal(before[p], after[p])}
  spatial = ("down_blocks_0", "attentions_0", "blocks_0", "attn2")
  assert changed == {spatial + ("to_k", "kernel"), spatial + ("to_v", "kernel")}
  for name in ("to_k", "to_v"):
    kernel = np.asarray(after[spatial + (name, "kernel")])
    assert kernel.shape == (11, 8)  # the new content width in, the layer's width out
    assert 0.01 < kernel.std() < 0.03 and abs(kernel.mean()) < 0.01  # drawn at `scale`, not zeros or copies
  assert not np.array_equal(after[spatial + ("to_k", "kernel")], after[spatial + ("to_v", "kernel")])
  # Self-attention (attn1) and temporal layers keep their width: they never read the content.
  assert np.shape(after[("down_blocks_0", "temporal_attentions_0", "blocks_0", "attn2", "to_k", "kernel")]) == (7, 8)


# ---------------------------------------------------------------- init_from + init_surgery through the trainer

TARGET_WIDTH, SOURCE_WIDTH, INIT = 12, 16, 7.0  # content widths (CLIP image / text); the target's fresh init


def _target_config(source_dir: str, surgery_ops=("widen_input_channels", "change_context_width"), **overrides):
  """tiny_config's video model ('depth' structure: 5 input channels, temporal layers) on 12-wide image content."""
  config = tiny_config.tiny_config(**{"model.content": "image", "model.unet.cross_attention_dim": TARGET_WIDTH,
                                      "init_from": source_dir, "init_surgery": tuple(surgery_ops), **overrides})
  config.model.image_encoder.update(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                                    image_size=16, patch_size=8, projection_dim=TARGET_WIDTH)
  return config


def _write_source(folder, config, seed=0, **unet_changes) -> str:
  """A pretrained directory of random weights for `config`'s model with `unet_changes` to its UNet."""
  model = loop.build_model(config).config
  rng = np.random.default_rng(seed)
  draw = lambda shapes: jax.tree.map(lambda s: (rng.standard_normal(s.shape) * 0.1).astype(np.float32), shapes)
  components = {name: (c, draw(pretrained.param_shapes(c)))
                for name, c in (("unet", dataclasses.replace(model.unet, **unet_changes)), ("vae", model.vae),
                                ("image_encoder", model.image_encoder))}
  return pretrained.save_pretrained(folder, components)


def _fresh(config):
  """The trainer's fresh params, every value INIT, so a kept init is told from a copy."""
  model = loop.build_model(config).config
  return {name: jax.tree.map(lambda s: np.full(s.shape, INIT, s.dtype), pretrained.param_shapes(getattr(model, name)))
          for name in ("unet", "vae", "image_encoder")}


@pytest.fixture(scope="module")
def stage1_source(tmp_path_factory):
  """An image model on 16-wide text content with 4 input channels (no structure), no temporal layers."""
  folder = tmp_path_factory.mktemp("source") / "sd"
  return _write_source(folder, _target_config(""), in_channels=4, cross_attention_dim=SOURCE_WIDTH,
                       temporal_conv="none", temporal_attention=False)


def _is_spatial_key_or_value(path) -> bool:
  return len(path) >= 3 and path[-3] == "attn2" and path[-2] in ("to_k", "to_v") and "temporal" not in "/".join(path)


def test_init_from_with_surgery_widens_the_input_reinits_cross_attention_kv_and_copies_the_rest(stage1_source):
  config = _target_config(stage1_source)
  merged = jax.device_get(loop._init_from(config, _fresh(config), None))
  source = surgery.load_weights(stage1_source)
  unet, source_unet = flatten(merged["unet"]), flatten(source["unet"])
  # widen_input_channels: the 4 latent channels' weights are the source's, the depth channel's are zero.
  kernel = merged["unet"]["conv_in"]["kernel"]
  np.testing.assert_array_equal(kernel[:, :, :4], source["unet"]["conv_in"]["kernel"])
  assert kernel.shape[2] == 5 and not np.any(kernel[:, :, 4:])
  # change_context_width: spatial cross-attention keys and values are drawn anew for the 12-wide content.
  key_values = [p for p in unet if _is_spatial_key_or_value(p)]
  assert len(key_values) == 2 * 4  # to_k and to_v of the level-2 transformers: 1 down, 1 mid, 2 up
  for path in key_values:
    assert unet[path].shape == (TARGET_WIDTH, source_unet[path].shape[1]) != source_unet[path].shape
    assert 0.01 < unet[path].std() < 0.03 and not np.any(unet[path] == INIT)
  # Everything else the source has is copied exactly; the temporal layers it lacks keep their init.
  for path, value in unet.items():
    if path in source_unet and path != ("conv_in", "kernel") and path not in key_values:
      np.testing.assert_array_equal(value, source_unet[path], err_msg="/".join(path))
    elif path not in source_unet:
      assert any(part.startswith("temporal_") for part in path) and np.all(value == INIT), path
  for name in ("vae", "image_encoder"):
    for a, b in zip(jax.tree.leaves(merged[name]), jax.tree.leaves(source[name])):
      np.testing.assert_array_equal(a, b)
  # The new keys and values come from the run's seed: a relaunch draws the same, another seed others.
  again = flatten(jax.device_get(loop._init_from(config, _fresh(config), None))["unet"])
  reseeded = flatten(jax.device_get(loop._init_from(_target_config(stage1_source, seed=1), _fresh(config), None))["unet"])
  for path in key_values:
    np.testing.assert_array_equal(again[path], unet[path])
    assert not np.allclose(reseeded[path], unet[path])


def test_the_trainers_init_skips_only_what_init_from_overwrites_and_keeps_the_rest_bit_equal(stage1_source):
  """train_and_evaluate's jitted init zeroes the params init_from copies (XLA then drops their
  initializers); every other param, absent from the source or named by init_exclude, keeps the very
  values of a full init, in the params and in the EMA."""
  config = _target_config(stage1_source, init_exclude=(r"unet/conv_in/.*",))
  model = loop.build_model(config)
  rng = jax.random.key(config.seed)
  abstract = jax.eval_shape(model.init, rng)
  labels = state_lib.trainable_labels(abstract, config.train.trainable)
  tx = state_lib.make_optimizer(config.train, labels)
  create = lambda key: sharding_lib.unbox(state_lib.create_state(model.init, tx, labels, key))
  copied = set(flatten(loop._init_source(config, abstract))) & set(flatten(sharding_lib.unbox(abstract)))
  full, skipped = jax.device_get((jax.jit(create)(rng), jax.jit(lambda k: loop._zero_params(create(k), copied))(rng)))
  assert ("unet", "conv_in", "kernel") not in copied  # excluded: keeps its init
  temporal = lambda paths: any("temporal" in "/".join(p) for p in paths)
  assert temporal(flatten(full.params)) and not temporal(copied)  # fresh layers: the source lacks them
  assert len(copied) > len(flatten(full.params)) // 2
  for name in ("params", "ema_params"):
    ours, want = flatten(getattr(skipped, name)), flatten(getattr(full, name))
    assert ours.keys() == want.keys()
    for path, value in want.items():
      if path in copied:
        assert not np.any(ours[path]), path
      else:
        np.testing.assert_array_equal(ours[path], value, err_msg="/".join(path))


def test_init_from_without_the_surgery_it_needs_or_with_an_unknown_one_says_which_setting(stage1_source):
  config = _target_config(stage1_source, surgery_ops=("widen_input_channels",))
  with pytest.raises(ConfigError, match="conv_in|to_k"):  # the context width still differs
    loop._init_from(config, _fresh(config), None)
  config = _target_config(stage1_source, surgery_ops=("widen_input_channels", "change_context_width", "transpose"))
  with pytest.raises(ConfigError, match="init_surgery.*transpose"):
    loop._init_from(config, _fresh(config), None)
  # init_exclude keeps the target's init where it matches, surgery or not.
  config = _target_config(stage1_source, init_exclude=("unet/time_embedding/.*",))
  merged = jax.device_get(loop._init_from(config, _fresh(config), None))
  assert all(np.all(v == INIT) for v in jax.tree.leaves(merged["unet"]["time_embedding"]))


def test_widening_through_init_from_keeps_the_source_models_outputs_whatever_the_new_channels_hold(tmp_path):
  """Gen-1 stage 3: a video model (4 input channels) gains structure channels; at step 0 it is the source."""
  config = _target_config(str(tmp_path / "video"), surgery_ops=("widen_input_channels",))
  source_dir = _write_source(tmp_path / "video", config, in_channels=4)
  merged = loop._init_from(config, _fresh(config), None)
  unet = loop.build_model(config).unet
  source_unet = type(unet)(dataclasses.replace(unet.config, in_channels=4))
  rng = np.random.default_rng(3)
  latents = rng.standard_normal((2, 3, 8, 8, 4)).astype(np.float32)
  t, context = np.array([10, 700]), rng.standard_normal((2, 1, TARGET_WIDTH)).astype(np.float32)
  depth = rng.uniform(-1, 1, (2, 3, 8, 8, 1)).astype(np.float32)
  reference = jax.jit(source_unet.apply)({"params": surgery.load_weights(source_dir)["unet"]}, latents, t, context)
  widened = jax.jit(unet.apply)({"params": merged["unet"]}, latents, t, context, jnp.asarray(depth))
  assert np.abs(np.asarray(reference)).max() > 0.1
  np.testing.assert_allclose(np.asarray(widened), np.asarray(reference), rtol=1e-5, atol=1e-5)


def test_replace_structure_channels_keeps_the_latent_weights_and_zeroes_the_old_structure():
  """'depth_pixels' (8 latent + 17 structure channels) -> 'depth_latent' (8 + 8 + 4): the old structure
  weights would read depth latents as depth pixels, so they go; the latent's stay."""
  rng = np.random.default_rng(0)
  params = {"conv_in": {"kernel": rng.standard_normal((3, 3, 25, 6)), "bias": rng.standard_normal(6)},
            "conv_out": {"kernel": rng.standard_normal((3, 3, 6, 8))}}
  replaced = surgery.replace_structure_channels(params, 20, 8)
  kernel = replaced["conv_in"]["kernel"]
  assert kernel.shape == (3, 3, 20, 6)
  np.testing.assert_array_equal(kernel[:, :, :8], params["conv_in"]["kernel"][:, :, :8])
  assert not np.any(kernel[:, :, 8:])
  np.testing.assert_array_equal(replaced["conv_in"]["bias"], params["conv_in"]["bias"])
  assert replaced["conv_out"] is params["conv_out"]
  with pytest.raises(ConfigError, match="latent_channels"):
    surgery.replace_structure_channels(params, 20, 26)
