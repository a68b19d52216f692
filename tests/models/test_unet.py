"""VideoUNet: parity with diffusers in image mode, and the temporal layers' contracts."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.embeddings import IPAdapterFaceIDImageProjection

import torch_oracle
from vidjax.convert import common
from vidjax.convert.diffusers_unet import convert_unet
from vidjax.errors import ConfigError
from vidjax.models import layers
from vidjax.models.attention import Attention, FeedForward
from vidjax.models.temporal import TemporalTransformer, causal_window_mask
from vidjax.models.unet import ImageProjection, UNetConfig, VideoUNet, init_inputs

GEN1 = dict(temporal_conv="conv1d", temporal_attention=True, temporal_max_frames=8)
MYV = dict(temporal_conv="pseudo3d", temporal_attention=True, temporal_relative_position=4, temporal_causal=True)


@pytest.fixture(scope="module")
def diffusers_unet(tmp_path_factory):
  torch.manual_seed(0)
  model = torch_oracle.perturb_(UNet2DConditionModel(**torch_oracle.TINY_UNET), seed=1, scale=0.05)
  folder = tmp_path_factory.mktemp("unet")
  model.save_pretrained(folder)
  return model, folder


@pytest.fixture(scope="module")
def converted(diffusers_unet):
  """(config, params, report, jitted apply) per temporal variant, converted once per module."""
  cache = {}

  def get(name):
    if name not in cache:
      config, params, report = convert_unet(diffusers_unet[1], **{"image": {}, "gen1": GEN1, "myv": MYV}[name])
      apply = jax.jit(VideoUNet(config).apply, static_argnames=("image_mode",))
      cache[name] = config, params, report, apply
    return cache[name]

  return get


def _inputs(batch=2, frames=1, h=13, w=11, channels=5, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((batch, frames, h, w, channels)).astype(np.float32),
          np.array([17, 803][:batch], np.int32),
          rng.standard_normal((batch, 7, 13)).astype(np.float32))


def test_image_mode_matches_diffusers(diffusers_unet, converted):
  torch_model, _ = diffusers_unet
  _, params, report, apply = converted("image")
  assert not report.missing and not report.unexpected
  latents, t, context = _inputs()
  ours = apply({"params": params}, latents, t, context)
  with torch.no_grad():
    ref = torch_model(torch_oracle.to_torch_nchw(latents[:, 0]), torch.from_numpy(t),
                      torch.from_numpy(context)).sample
  np.testing.assert_allclose(np.asarray(ours[:, 0]), torch_oracle.from_torch_nchw(ref), atol=1e-4, rtol=0)


def test_image_projection_context_matches_diffusers(tmp_path):
  """encoder_hid_dim_type 'image_proj': one image embedding (11 wide) -> 32 tokens of the context's 13
  (ImageProjection), as diffusers."""
  torch.manual_seed(0)
  model = UNet2DConditionModel(**torch_oracle.TINY_UNET, encoder_hid_dim_type="image_proj", encoder_hid_dim=11)
  model = torch_oracle.perturb_(model, seed=2, scale=0.05)
  model.save_pretrained(tmp_path)
  config, params, report = convert_unet(tmp_path)
  assert config.image_context_tokens == 32 and config.encoder_hid_dim == 11 and not report.missing and not report.unexpected
  latents, t, _ = _inputs()
  embeds = np.random.default_rng(3).standard_normal((2, 11)).astype(np.float32)
  ours = jax.jit(VideoUNet(config).apply)({"params": params}, latents, t, embeds[:, None])
  with torch.no_grad():
    ref = model(torch_oracle.to_torch_nchw(latents[:, 0]), torch.from_numpy(t), encoder_hidden_states=None,
                added_cond_kwargs={"image_embeds": torch.from_numpy(embeds)}).sample
  np.testing.assert_allclose(np.asarray(ours[:, 0]), torch_oracle.from_torch_nchw(ref), atol=1e-4, rtol=0)
  # The tokens differ, so positions read different values: not Gen-1's single token, whose one key
  # gives every position the same value (the output then ignores the query).
  tokens = ImageProjection(32, width=13).apply({"params": params["encoder_hid_proj"]}, embeds[:, None])
  assert tokens.shape == (2, 32, 13) and float(jnp.std(tokens, axis=1).mean()) > 0.1
  with pytest.raises(ConfigError, match="one image embedding"):
    VideoUNet(config).apply({"params": params}, latents, t, np.zeros((2, 7, 11), np.float32))


def test_mlp_image_projection_matches_diffusers_faceid_projection_and_is_not_linear():
  """image_projection_mult > 0: diffusers' IPAdapterFaceIDImageProjection, converted by our generic mapping."""
  torch.manual_seed(0)
  ref_model = torch_oracle.perturb_(IPAdapterFaceIDImageProjection(13, 13, mult=3, num_tokens=5), seed=4, scale=0.05)
  module = ImageProjection(5, mult=3)
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 1, 13)))["params"]
  params, report = common.convert_state_dict({k: v.numpy() for k, v in ref_model.state_dict().items()},
                                             nn.unbox(shapes), source="IPAdapterFaceIDImageProjection")
  assert not report.missing and not report.unexpected
  embeds = np.random.default_rng(5).standard_normal((2, 13)).astype(np.float32)
  ours = np.asarray(module.apply({"params": params}, embeds[:, None]))
  with torch.no_grad():
    ref = ref_model(torch.from_numpy(embeds)).numpy()
  np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
  # Not a linear map of the embedding (before the LayerNorm, which both projections end in).
  ff = lambda e: np.asarray(FeedForward(3, "gelu", 65).apply({"params": params["ff"]}, e))
  a, b = embeds
  assert np.abs(ff(np.stack([a + b])) - ff(np.stack([a])) - ff(np.stack([b])) + ff(np.zeros((1, 13)))).max() > 0.1
  with pytest.raises(ConfigError, match="image_projection_mult.*image_context_tokens is 0"):
    UNetConfig(image_projection_mult=2)


def test_image_time_embedding_matches_diffusers_projection_class_embedding(tmp_path):
  # diffusers' class_embed_type='projection' with class labels of the context's width is our
  # image_time_embedding, fed the image embedding that is also the (one-token) context.
  torch.manual_seed(0)
  model = UNet2DConditionModel(**torch_oracle.TINY_UNET, class_embed_type="projection",
                               projection_class_embeddings_input_dim=13)
  model = torch_oracle.perturb_(model, seed=2, scale=0.05)
  model.save_pretrained(tmp_path)
  config, params, report = convert_unet(tmp_path)
  assert config.image_time_embedding and not report.missing and not report.unexpected
  latents, t, _ = _inputs()
  embeds = np.random.default_rng(3).standard_normal((2, 13)).astype(np.float32)
  apply = jax.jit(VideoUNet(config).apply)
  ours = apply({"params": params}, latents, t, embeds[:, None])
  with torch.no_grad():
    ref = model(torch_oracle.to_torch_nchw(latents[:, 0]), torch.from_numpy(t),
                encoder_hidden_states=torch.from_numpy(embeds[:, None]), class_labels=torch.from_numpy(embeds)).sample
  np.testing.assert_allclose(np.asarray(ours[:, 0]), torch_oracle.from_torch_nchw(ref), atol=1e-4, rtol=0)
  # The embedding reaches the output through the time embedding as well: zeroing that path changes it.
  cut = {**params, "class_embedding": jax.tree_util.tree_map(jnp.zeros_like, params["class_embedding"])}
  assert float(jnp.abs(apply({"params": cut}, latents, t, embeds[:, None]) - ours).max()) > 1e-3
  with pytest.raises(ConfigError, match="image_time_embedding"):
    apply({"params": params}, latents, t, np.zeros((2, 7, 13), np.float32))


def test_a_fresh_image_time_embedding_leaves_the_model_unchanged(converted):
  # Its zero-initialised last layer: `init_from` a model without it starts from the same function.
  config, params, _, apply = converted("image")
  wide = dataclasses.replace(config, image_time_embedding=True)
  latents, t, _ = _inputs()
  context = np.random.default_rng(4).standard_normal((2, 1, 13)).astype(np.float32)
  mlp = layers.TimestepMLP(4 * config.block_out_channels[0], zero_init_out=True)
  merged = {**params, "class_embedding": nn.unbox(mlp.init(jax.random.key(0), context[:, 0])["params"])}

  def loss(p):
    out = VideoUNet(wide).apply({"params": p}, latents, t, context)
    return jnp.sum(out**2), out

  (_, widened), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(merged)
  np.testing.assert_allclose(np.asarray(widened), np.asarray(apply({"params": params}, latents, t, context)),
                             atol=1e-5, rtol=0)
  # ... and it can learn: the zero layer gets a gradient (it would not if both layers started at zero).
  assert float(jnp.abs(grads["class_embedding"]["linear_2"]["kernel"]).max()) > 0


@pytest.mark.parametrize("variant", ["gen1", "myv"])
def test_fresh_video_model_equals_image_model_until_perturbed(converted, variant):
  _, params, report, apply = converted(variant)
  assert report.missing and all("temporal_" in p for p in report.missing)
  latents, t, context = _inputs(frames=4)
  video = apply({"params": params}, latents, t, context, temporal_window=3)
  # Image mode on the frames folded into the batch is the image model applied frame by frame.
  folded = latents.reshape((8, 1) + latents.shape[2:])
  frames = apply({"params": params}, folded, np.repeat(t, 4), np.repeat(context, 4, axis=0), image_mode=True)
  np.testing.assert_allclose(np.asarray(video), np.asarray(frames).reshape(video.shape), atol=1e-5, rtol=0)

  flat = common.flatten(params)
  rng = np.random.default_rng(3)
  perturbed = common.unflatten({p: v + 0.05 * rng.standard_normal(v.shape).astype(v.dtype)
                                if any(s.startswith("temporal_") for s in p) else v for p, v in flat.items()})
  moved = apply({"params": perturbed}, latents, t, context, temporal_window=3)
  assert np.abs(np.asarray(moved) - np.asarray(video)).max() > 1e-3


def test_video_gate_mixes_image_and_video_samples_in_one_call(converted):
  _, params, _, apply = converted("gen1")
  params = jax.tree_util.tree_map(lambda v: v + 0.02, params)  # make temporal layers matter
  latents, t, context = _inputs(frames=4)
  gated = apply({"params": params}, latents, t, context, video_gate=jnp.array([0.0, 1.0]))
  image = apply({"params": params}, latents, t, context, image_mode=True)
  video = apply({"params": params}, latents, t, context, video_gate=jnp.array([1.0, 1.0]))
  np.testing.assert_allclose(np.asarray(gated[0]), np.asarray(image[0]), atol=1e-5)
  np.testing.assert_allclose(np.asarray(gated[1]), np.asarray(video[1]), atol=1e-5)
  assert np.abs(np.asarray(image[1]) - np.asarray(video[1])).max() > 1e-3


def _changes_at(apply, x, y, i):
  return float(np.abs(np.asarray(apply(x)[:, i]) - np.asarray(apply(y)[:, i])).max())


def test_causal_window_bounds_what_a_temporal_attention_sees():
  """Frame i's output ignores frames after i and frames before i - L_M + 1."""
  attention = Attention(heads=2, head_dim=4, relative_position=3)
  x = jax.random.normal(jax.random.key(0), (3, 8, 8))  # (pixels, T, C)
  params = attention.init(jax.random.key(1), x)
  window, i = 3, 5
  apply = jax.jit(lambda v, w: attention.apply(params, v, mask=causal_window_mask(8, w)))
  perturb = lambda frames: x.at[:, frames].add(1.0)
  assert _changes_at(lambda v: apply(v, window), x, perturb(slice(i + 1, None)), i) == 0.0
  assert _changes_at(lambda v: apply(v, window), x, perturb(slice(0, i - window + 1)), i) == 0.0
  assert _changes_at(lambda v: apply(v, window), x, perturb(slice(i - window + 1, i)), i) > 1e-4
  assert _changes_at(lambda v: apply(v, 8), x, perturb(slice(0, i - window + 1)), i) > 1e-4


def test_temporal_transformer_receptive_field_is_two_stacked_windows():
  """Make-Your-Video's block masks both of its self-attentions: it sees 2 (L_M - 1) frames back."""
  block = TemporalTransformer(heads=2, head_dim=4, num_groups=4, relative_position=3, causal=True)
  x = jax.random.normal(jax.random.key(0), (1, 9, 3, 2, 8))
  params = jax.tree_util.tree_map(lambda v: v + 0.1, block.init(jax.random.key(1), x, window=3))
  apply = jax.jit(lambda v: block.apply(params, v, window=3))
  reach, i = 2 * (3 - 1), 7
  # Permuting frames keeps GroupNorm's statistics (taken over T) unchanged, up to the float32 rounding
  # of sums taken in another order (1.2e-6 seen): far below the > 1e-4 of a frame inside the field.
  permute = lambda frames: x.at[:, frames].set(x[:, frames][:, ::-1])
  assert _changes_at(apply, x, permute(slice(i + 1, None)), i) < 1e-5
  assert _changes_at(apply, x, permute(slice(0, i - reach)), i) < 1e-5
  assert _changes_at(apply, x, permute(slice(i - reach - 1, i - reach + 1)), i) > 1e-4


def test_wrong_input_channels_is_a_clear_error(converted):
  _, params, _, apply = converted("image")
  latents, t, context = _inputs(channels=4)
  with pytest.raises(ConfigError, match="channels"):
    apply({"params": params}, latents, t, context)


def test_converter_rejects_a_checkpoint_of_another_shape(diffusers_unet, converted):
  _, folder = diffusers_unet
  config = converted("image")[0]
  other = dataclasses.replace(config, cross_attention_dim=16)
  state_dict = common.load_state_dict(common.find_weights(folder, ["diffusion_pytorch_model"]))
  with pytest.raises(ConfigError, match="shape mismatches"):
    convert_unet(state_dict, other)


def test_every_param_carries_logical_axis_names():
  config = UNetConfig(block_out_channels=(8, 16), attention_levels=(True, False), num_attention_heads=(2, 2),
                      cross_attention_dim=8, norm_num_groups=4, layers_per_block=1, **MYV)
  boxed = jax.eval_shape(VideoUNet(config).init, jax.random.key(0), **init_inputs(config, frames=2))["params"]
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
  unnamed = [v for v in leaves if not isinstance(v, nn.LogicallyPartitioned) or len(v.names) != v.value.ndim]
  assert len(leaves) > 100 and not unnamed
