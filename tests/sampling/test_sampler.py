"""The compiled sampler (vidjax.sampling): parity of the whole DDIM + CFG loop with diffusers, and compile-once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL
from diffusers import DDIMScheduler, UNet2DConditionModel

import torch_oracle
from vidjax import diffusion
from vidjax.convert.diffusers_unet import convert_unet
from vidjax.convert.diffusers_vae import convert_vae
from vidjax.models import layers
from vidjax.models.unet import UNetConfig, VideoUNet, init_inputs
from vidjax.models.vae import AutoencoderKL, decode_video
from vidjax.sampling.sampler import Sampler, SamplingConfig

SD2_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                     set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
  torch.manual_seed(0)
  unet = torch_oracle.perturb_(UNet2DConditionModel(**torch_oracle.TINY_UNET), seed=2, scale=0.05)
  vae = torch_oracle.perturb_(TorchAutoencoderKL(**torch_oracle.TINY_VAE), seed=3, scale=0.05)
  folder = tmp_path_factory.mktemp("models")
  unet.save_pretrained(folder / "unet")
  vae.save_pretrained(folder / "vae")
  return unet, vae, folder


def _diffusers_loop(unet, vae, scheduler, noise, depth, cond, uncond, scale):
  """SD-2-depth's denoising loop (as StableDiffusionDepth2ImgPipeline runs it), on NCHW torch tensors."""
  latents = noise
  context = torch.cat([uncond, cond])
  with torch.no_grad():
    for t in scheduler.timesteps:
      model_in = torch.cat([torch.cat([latents] * 2), torch.cat([depth] * 2)], dim=1)
      out_uncond, out_cond = unet(model_in, t, encoder_hidden_states=context).sample.chunk(2)
      latents = scheduler.step(out_uncond + scale * (out_cond - out_uncond), t, latents).prev_sample
    return vae.decode(latents / vae.config.scaling_factor).sample


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_cfg_loop_matches_diffusers_on_decoded_frames(tiny_models, prediction_type):
  torch_unet, torch_vae, folder = tiny_models
  unet_config, unet_params, _ = convert_unet(folder / "unet")
  vae_config, vae_params, _ = convert_vae(folder / "vae")
  rng = np.random.default_rng(0)
  batch, h, w, steps, scale = 2, 6, 5, 12, 6.0
  noise = rng.standard_normal((batch, 1, h, w, 4)).astype(np.float32)
  depth = rng.uniform(-1, 1, (batch, 1, h, w, 1)).astype(np.float32)
  cond = rng.standard_normal((batch, 7, 13)).astype(np.float32)
  uncond = rng.standard_normal((1, 7, 13)).astype(np.float32)

  scheduler = DDIMScheduler(**SD2_SCHEDULER, prediction_type=prediction_type)
  scheduler.set_timesteps(steps)
  ref = _diffusers_loop(torch_unet, torch_vae, scheduler, torch_oracle.to_torch_nchw(noise[:, 0]),
                        torch_oracle.to_torch_nchw(depth[:, 0]), torch.from_numpy(cond),
                        torch.from_numpy(np.repeat(uncond, batch, axis=0)), scale)

  schedule = diffusion.make_schedule("scaled_linear", beta_start=0.00085, beta_end=0.012)
  sampler = Sampler(VideoUNet(unet_config), schedule,
                    SamplingConfig(num_inference_steps=steps, prediction_type=prediction_type))
  latents = sampler(unet_params, noise, cond, uncond, structure=depth, guidance_scale=scale)
  frames = decode_video(AutoencoderKL(vae_config), vae_params, latents)  # it undoes the scaling factor
  np.testing.assert_allclose(np.asarray(frames[:, 0]), torch_oracle.from_torch_nchw(ref), atol=1e-3, rtol=0)


def test_sixteen_frame_temporal_guidance_call_compiles_once():
  config = UNetConfig(in_channels=5, block_out_channels=(8, 16), layers_per_block=1, attention_levels=(True, False),
                      num_attention_heads=(2, 2), cross_attention_dim=8, norm_num_groups=4, temporal_conv="pseudo3d",
                      temporal_attention=True, temporal_relative_position=16, temporal_causal=True)
  unet = VideoUNet(config)
  params = jax.jit(unet.init)(layers.init_key(jax.random.key(0)), **init_inputs(config, frames=2))["params"]
  sampler = Sampler(unet, diffusion.make_schedule(),
                    SamplingConfig(num_inference_steps=3, with_temporal_guidance=True))
  shape = (1, 16, 10, 6)  # 16 frames, as long videos run; a small, non-square latent: the loop runs at -O0

  def call(seed, window):
    keys = jax.random.split(jax.random.key(seed), 3)
    return sampler(params, jax.random.normal(keys[0], shape + (4,)), jax.random.normal(keys[1], (1, 3, 8)),
                   jnp.zeros((1, 3, 8)), structure=jax.random.uniform(keys[2], shape + (1,)),
                   guidance_scale=5.0 + seed, temporal_guidance_scale=1.5 - 0.1 * seed, temporal_window=window)

  first = call(0, 16)
  second = call(1, 8)  # new noise, prompt, depth, scales and window
  assert sampler.traces == 1
  assert first.shape == shape + (4,) and bool(jnp.all(jnp.isfinite(second)))
  assert float(jnp.abs(first - second).max()) > 1e-3
