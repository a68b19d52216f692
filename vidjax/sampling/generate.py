"""generate(): structure + content -> video, through a VideoDiffusionModel and the compiled sampler.

The one path from conditioning to frames, shared by the trainer's sample summaries, the toy main
job's final edit and the editing pipeline. Samplers are cached per static setting, so repeated
calls at the same shapes do not recompile.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vidjax.models.video_model import VideoDiffusionModel
from vidjax.sampling.sampler import Sampler, SamplingConfig


@functools.lru_cache(maxsize=16)
def _sampler(model: VideoDiffusionModel, config: SamplingConfig) -> Sampler:
  return Sampler(model.unet, model.schedule, config)


def generate(model: VideoDiffusionModel, params: Mapping[str, Any], depth: jax.Array, *,
             tokens: jax.Array | None = None, image_embeds: jax.Array | None = None, seed: int = 0,
             steps: int = 25, guidance_scale: float = 5.0, temporal_scale: float = 1.0,
             structure_fidelity: jax.Array | None = None, temporal_window: int | None = None) -> np.ndarray:
  """Samples a video.

  Args:
    model, params: the model and its params ({'unet', 'vae', 'text_encoder'}).
    depth: (B, T, H, W, 1) in [-1, 1] at frame resolution (already blurred to its t_s).
    tokens: (B, L) caption ids, or image_embeds (B, D), per the model's content kind.
    seed: the noise seed.
    steps, guidance_scale, temporal_scale: DDIM steps, omega, omega_t (temporal guidance runs when != 1).
    structure_fidelity: (B,) t_s for 'depth_latent' models (default 0).
    temporal_window: causal window L_M.
  Returns:
    uint8 (B, T, H, W, 3).
  """
  b, t, h, w, _ = depth.shape
  factor = model.config.vae.downsample_factor
  latent_hw = (h // factor, w // factor)
  fidelity = jnp.zeros((b,), jnp.int32) if structure_fidelity is None else structure_fidelity
  structure = model.encode_structure(params, depth, fidelity, latent_hw)
  context = model.encode_content(params, tokens=tokens, image_embeds=image_embeds)
  sampler = _sampler(model, SamplingConfig(num_inference_steps=steps, prediction_type=model.config.prediction_type,
                                           temporal_guidance=temporal_scale != 1.0))
  noise = jax.random.normal(jax.random.key(seed), (b, t, *latent_hw, model.config.vae.latent_channels))
  latents = sampler(params["unet"], noise, context, model.null_content(params, 1), structure=structure,
                    guidance_scale=guidance_scale, temporal_scale=temporal_scale, temporal_window=temporal_window)
  frames = model.decode(params, latents)
  return np.asarray(jnp.clip((frames + 1.0) * 127.5, 0, 255).astype(jnp.uint8))
