"""VideoDiffusionModel's Gen-1 conditioning: 'depth_latent' structure and the CLIP embedding of a random frame.

Params are drawn with numpy from `pretrained.param_shapes` (no init is compiled); no UNet runs here, only
the tiny VAE encoder and CLIP vision tower, each compiled once per input shape.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidjax.convert import pretrained
from vidjax.errors import ConfigError
from vidjax.models.clip import CLIPVisionConfig, preprocess_levels
from vidjax.models.unet import UNetConfig
from vidjax.models.vae import VAEConfig
from vidjax.models.video_model import ModelConfig, VideoDiffusionModel

LATENT, WIDTH, IMAGE = 4, 16, 16  # VAE latent channels, CLIP projection width, CLIP input size


@pytest.fixture(scope="module")
def gen1():
  """A Gen-1 model ('depth_latent' structure, CLIP image content) and random numpy params for its VAE and tower."""
  vae = VAEConfig(block_out_channels=(8, 8), layers_per_block=1, latent_channels=LATENT, norm_num_groups=4,
                  scaling_factor=0.5)
  vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                            image_size=IMAGE, patch_size=8, hidden_act="quick_gelu", projection_dim=WIDTH)
  unet = UNetConfig(in_channels=2 * LATENT + 4, block_out_channels=(8,), layers_per_block=1, attention_levels=(True,),
                    num_attention_heads=(1,), cross_attention_dim=WIDTH, norm_num_groups=4)
  model = VideoDiffusionModel(ModelConfig(unet=unet, vae=vae, image_encoder=vision, structure="depth_latent",
                                          content="image"))
  rng = np.random.default_rng(0)
  draw = lambda shapes: jax.tree.map(lambda s: (rng.standard_normal(s.shape) * 0.1).astype(np.float32), shapes)
  params = {"vae": draw(pretrained.param_shapes(vae)), "image_encoder": draw(pretrained.param_shapes(vision))}
  return model, params


# ---------------------------------------------------------------- structure 'depth_latent'

B, T, H, W = 2, 3, 16, 16  # depth clips; the tiny VAE's factor is 2, so the latent is 8 x 8


@pytest.fixture(scope="module")
def structure_fn(gen1):
  model, params = gen1
  encode = jax.jit(model.encode_structure, static_argnums=3)
  return lambda depth, fidelity: np.asarray(encode(params, depth, jnp.asarray(fidelity, jnp.int32), (H // 2, W // 2)))


def _clips(seed=0):
  """(B, T, H, W, 1) depth; clip 0's frames share one pattern at different ranges: [0, 1], [0, 0.5], [0.5, 1]."""
  rng = np.random.default_rng(seed)
  base = rng.uniform(0, 1, (H, W)).astype(np.float32)
  depth = rng.uniform(0, 1, (B, T, H, W, 1)).astype(np.float32) * 5.0 + 2.0
  depth[0, :, :, :, 0] = np.stack([base, 0.5 * base, 0.5 * base + 0.5])
  return depth


def test_depth_latents_are_the_vae_latents_of_the_depth_normalised_per_clip_over_all_its_frames(gen1, structure_fn):
  model, params = gen1
  depth = _clips()
  structure = structure_fn(depth, [0, 0])
  assert structure.shape == (B, T, H // 2, W // 2, LATENT + 4)  # the depth's latents, then the t_s channels
  # The oracle: each clip's own min and max over all its frames and pixels, to [-1, 1], as RGB.
  low = depth.min(axis=(1, 2, 3, 4), keepdims=True)
  high = depth.max(axis=(1, 2, 3, 4), keepdims=True)
  normalised = 2.0 * (depth - low) / (high - low) - 1.0
  expected = np.asarray(jax.jit(model.encode_frames)(params, np.repeat(normalised, 3, axis=-1)))  # posterior mean
  np.testing.assert_allclose(structure[..., :LATENT], expected, rtol=1e-5, atol=1e-5)
  # A dimmer frame stays dimmer: per-frame normalisation would map clip 0's three frames to one map
  # (the random tiny VAE moves little: 1e-3 is a hundred times the tolerance above).
  latents = structure[0, :, ..., :LATENT]
  assert np.abs(latents[1] - latents[0]).max() > 1e-3 and np.abs(latents[2] - latents[1]).max() > 1e-3
  # One clip's range does not move another's latents (per sample, not per batch), and any affine
  # rescaling of a whole clip (a depth model's unknown scale and shift) gives the same channels.
  rescaled = depth.copy()
  rescaled[1] = 10.0 * rescaled[1] - 3.0
  np.testing.assert_allclose(structure_fn(rescaled, [0, 0]), structure, rtol=1e-5, atol=1e-5)
  # The depth arrives already blurred to its t_s: t_s changes only the t_s channels, not the depth latents.
  np.testing.assert_array_equal(structure_fn(depth, [3, 7])[..., :LATENT], structure[..., :LATENT])


def test_the_last_four_channels_are_each_samples_structure_fidelity_embedding_at_every_frame_and_pixel(structure_fn):
  fidelity = np.array([0, 5])
  channels = structure_fn(_clips(), fidelity)[..., LATENT:]  # after the depth latents
  assert channels.shape == (B, T, H // 2, W // 2, 4)
  for b, t_s in enumerate(fidelity):  # Gen-1 Sec. 3.3's sinusoid of t_s: [sin(t), sin(0.01 t), cos(t), cos(0.01 t)]
    expected = np.array([np.sin(t_s), np.sin(0.01 * t_s), np.cos(t_s), np.cos(0.01 * t_s)], np.float32)
    np.testing.assert_allclose(channels[b], np.broadcast_to(expected, channels[b].shape), atol=1e-6)
  assert np.abs(channels[0] - channels[1]).max() > 0.5  # one channel per sample, not one per batch


# ---------------------------------------------------------------- embed_frames

CLIPS, FRAMES = 6, 4


def _frames(seed=0):
  """(CLIPS, FRAMES, 24, 16, 3) in [-1, 1] from uint8 images (exact grey levels), and those images.

  Not square: the CLIP preprocessing resizes the short side and crops the centre of the long one.
  """
  images = np.random.default_rng(seed).integers(0, 256, (CLIPS, FRAMES, 24, 16, 3), dtype=np.uint8)
  return images.astype(np.float32) / 127.5 - 1.0, images


@pytest.fixture(scope="module")
def embedded(gen1):
  """Embeddings of every frame alone (the oracle, (CLIPS, FRAMES, D)) and the jitted `embed_frames`."""
  model, params = gen1
  frames, images = _frames()
  tower = lambda pixels: model.image_encoder.apply({"params": params["image_encoder"]}, pixels)["image_embeds"]
  pixels = preprocess_levels(jnp.asarray(images.reshape(-1, 24, 16, 3), jnp.float32), IMAGE)
  every_frame = np.asarray(jax.jit(tower)(pixels)).reshape(CLIPS, FRAMES, WIDTH)
  embed = jax.jit(model.embed_frames)
  return frames, every_frame, lambda key: np.asarray(embed(params, frames, key))


def _picked(every_frame, embeds):
  """The index of the one frame of each clip whose own embedding `embeds` is; fails if none or two match."""
  distance = np.abs(every_frame - embeds[:, None]).max(axis=-1)  # (CLIPS, FRAMES)
  picked = distance.argmin(axis=1)
  assert np.all(distance[np.arange(CLIPS), picked] < 1e-5), distance
  assert np.all(np.sort(distance, axis=1)[:, 1] > 1e-3), distance  # the frames' embeddings are far apart
  return picked


def test_embed_frames_embeds_exactly_one_frame_of_each_clip_through_the_clip_preprocessing(embedded):
  _, every_frame, embed = embedded
  embeds = embed(jax.random.key(0))
  assert embeds.shape == (CLIPS, WIDTH)
  _picked(every_frame, embeds)  # each row is the tower applied to one of its clip's frames, preprocessed


def test_the_frame_is_random_per_clip_and_fixed_by_the_key(embedded):
  _, every_frame, embed = embedded
  picks = np.stack([_picked(every_frame, embed(jax.random.key(seed))) for seed in range(8)])  # (keys, CLIPS)
  np.testing.assert_array_equal(embed(jax.random.key(3)), embed(jax.random.key(3)))  # same key, same frames
  assert all(len(set(row)) > 1 for row in picks)  # one key picks different frames for different clips
  assert len({tuple(row) for row in picks}) > 1  # another key, other frames
  assert set(picks.ravel()) == set(range(FRAMES))  # every frame can be picked, the first and the last too


@pytest.mark.parametrize("knob,value", [("image_context_tokens", 4), ("image_time_embedding", True)])
def test_image_embedding_readers_are_refused_for_a_text_model(gen1, knob, value):
  model, _ = gen1
  unet = dataclasses.replace(model.config.unet, in_channels=LATENT + 1, **{knob: value})
  text = pretrained.CONFIG_CLASSES["CLIPTextConfig"](hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                                     num_hidden_layers=1, projection_dim=WIDTH)
  with pytest.raises(ConfigError, match=knob):
    ModelConfig(unet=unet, vae=model.config.vae, text_encoder=text, null_tokens=(0, 1))
  image = ModelConfig(unet=dataclasses.replace(unet, in_channels=2 * LATENT + 4), vae=model.config.vae,
                      image_encoder=model.config.image_encoder, structure="depth_latent", content="image")
  assert getattr(image.unet, knob) == value


def test_an_image_embedding_wider_than_the_context_is_projected_to_its_width(gen1):
  """CLIP's projection_dim need not be the UNet's context width when image_context_tokens projects it
  (unet.encoder_hid_dim, diffusers' name): a 24-wide embedding drives a 16-wide cross-attention."""
  model, _ = gen1
  wide = dataclasses.replace(model.config.image_encoder, projection_dim=24)
  with pytest.raises(ConfigError, match="encoder_hid_dim.*image_context_tokens is 0"):
    dataclasses.replace(model.config.unet, encoder_hid_dim=24)
  unet = dataclasses.replace(model.config.unet, image_context_tokens=3)
  with pytest.raises(ConfigError, match="encoder_hid_dim"):
    ModelConfig(unet=unet, vae=model.config.vae, image_encoder=wide, structure="depth_latent", content="image")
  unet = dataclasses.replace(unet, encoder_hid_dim=24)
  wider = VideoDiffusionModel(ModelConfig(unet=unet, vae=model.config.vae, image_encoder=wide,
                                          structure="depth_latent", content="image"))
  params = jax.jit(wider.init)(jax.random.key(0))
  kernel = params["unet"]["encoder_hid_proj"]["image_embeds"]["kernel"]
  assert jax.tree.leaves(kernel)[0].shape == (24, 3 * WIDTH)
  assert wider.null_content(params, 2).shape == (2, 1, 24)
  latents = jax.random.normal(jax.random.key(1), (2, 2, 4, 4, unet.in_channels))
  embeds = jax.random.normal(jax.random.key(2), (2, 24))
  run = jax.jit(lambda content: wider.unet.apply({"params": params["unet"]}, latents, jnp.array([10, 10]), content))
  out = run(wider.encode_content(params, image_embeds=embeds))
  assert out.shape == latents.shape[:-1] + (unet.out_channels,)
  # The content reaches the output: another embedding, another prediction; the null content differs too.
  assert not np.allclose(out, run(wider.encode_content(params, image_embeds=-embeds)), atol=1e-6)
  assert not np.allclose(out, run(wider.null_content(params, 2)), atol=1e-6)
