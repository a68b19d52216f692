"""One compiled sampling function: VideoUNet + guidance + DDIM.

`Sampler` binds a UNet and a noise schedule to the static sampling settings (step count,
parameterisation, spacing, whether temporal guidance runs) and compiles the whole loop once per
input shape. Everything a user varies between calls (noise, prompts, structure, guidance scales,
eta, the causal window L_M, masks, SDEdit strength) is traced, so a new prompt or seed at the same
shapes reuses the compiled loop. `traces` counts compilations, for tests and logs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from vidjax import diffusion
from vidjax.errors import InputError
from vidjax.models.unet import VideoUNet


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Static settings: changing one compiles a new loop."""

  num_inference_steps: int = 25
  prediction_type: str = "v_prediction"
  spacing: str = "leading"
  steps_offset: int = 1
  set_alpha_to_one: bool = False
  with_temporal_guidance: bool = False  # Gen-1 Eq. 8 (3N batch) instead of plain CFG (2N batch)
  # The per-frame image model (every video gate 0: the temporal layers skipped), as Gen-1's image
  # batches train it and Make-Your-Video's Table 3 compares it; plain CFG only.
  image_mode: bool = False


class Sampler:
  """sampler(params, noise, context, null_context, ...) -> latents; see `__call__`."""

  def __init__(self, unet: VideoUNet, schedule: diffusion.Schedule, config: SamplingConfig):
    if config.with_temporal_guidance and config.image_mode:
      raise InputError("image_mode", "has no video model to guide towards (temporal guidance)",
                       "use temporal_guidance_scale 1 with image_mode")
    self.unet, self.schedule, self.config = unet, schedule, config
    self.traces = 0
    self._sample = jax.jit(self._sample_impl)

  def __call__(self, params: Any, noise: jax.Array, context: jax.Array, null_context: jax.Array, *,
               structure: jax.Array | None = None, rng: jax.Array | None = None,
               guidance_scale: float | jax.Array = 7.5, temporal_guidance_scale: float | jax.Array = 1.0,
               eta: float | jax.Array = 0.0, temporal_window: int | jax.Array | None = None,
               init_latents: jax.Array | None = None, strength: float | jax.Array = 1.0,
               keep_mask: jax.Array | None = None, source_latents: jax.Array | None = None) -> jax.Array:
    """Samples latents.

    Args:
      params: the UNet's params.
      noise: (B, T, h, w, C) standard normal start latents (or the SDEdit noise).
      context: (B, L, D) content tokens; null_context: (1 or B, L, D) the unconditional content.
      structure: (B, T, h, w, Cs) channels concatenated to the latents at every step, or None.
      rng: key for eta > 0 and masked editing.
      guidance_scale: omega; temporal_guidance_scale: omega_t (used when config.with_temporal_guidance).
      temporal_window: causal receptive field L_M (for causal temporal attention); None = the whole past.
      init_latents, strength: SDEdit; keep_mask (B, T, h, w, 1), source_latents: masked editing.
    Returns:
      (B, T, h, w, C) float32 latents.
    """
    as_array = lambda v, dtype: None if v is None else jnp.asarray(v, dtype)
    # eta and strength are traced only when their feature is in use: a traced eta needs noise from
    # rng, and a traced strength turns the loop into a while loop.
    eta = as_array(eta, jnp.float32) if rng is not None else _require_default("eta", eta, 0.0, "pass rng")
    strength = (as_array(strength, jnp.float32) if init_latents is not None
                else _require_default("strength", strength, 1.0, "pass init_latents"))
    return self._sample(params, noise, context, null_context, structure, rng,
                        as_array(guidance_scale, jnp.float32), as_array(temporal_guidance_scale, jnp.float32),
                        eta, as_array(temporal_window, jnp.int32), init_latents, strength, keep_mask, source_latents)

  def _sample_impl(self, params, noise, context, null_context, structure, rng, guidance_scale,
                   temporal_guidance_scale, eta, temporal_window, init_latents, strength, keep_mask, source_latents):
    self.traces += 1  # runs only while tracing, i.e. once per compilation
    batch = noise.shape[0]

    def model_fn(z, t, ctx, video_gate):
      if self.config.image_mode:
        video_gate = jnp.zeros_like(video_gate)
      copies = z.shape[0] // batch  # guidance stacks 2 or 3 copies of the batch
      cond = None if structure is None else jnp.concatenate([structure] * copies)
      return self.unet.apply({"params": params}, z, t, ctx, cond, video_gate=video_gate,
                             temporal_window=temporal_window)

    c = self.config
    if c.with_temporal_guidance:
      denoise = diffusion.temporal_guidance(model_fn, context=context, null_context=null_context,
                                            scale=guidance_scale, temporal_guidance_scale=temporal_guidance_scale)
    else:
      denoise = diffusion.classifier_free_guidance(model_fn, context=context, null_context=null_context,
                                                   scale=guidance_scale)
    return diffusion.ddim_sample(
        denoise, noise, self.schedule, num_inference_steps=c.num_inference_steps, prediction_type=c.prediction_type,
        eta=0.0 if eta is None else eta, spacing=c.spacing, steps_offset=c.steps_offset, set_alpha_to_one=c.set_alpha_to_one, rng=rng,
        init_latents=init_latents, strength=1.0 if strength is None else strength, keep_mask=keep_mask, source_latents=source_latents)


def _require_default(name: str, value, default: float, fix: str) -> None:
  if value != default:
    raise InputError(name, f"{value} needs its input", f"{fix} to use {name} != {default}")
  return None
