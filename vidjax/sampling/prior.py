"""Sampling the prior: a caption's CLIP text encoding -> CLIP image embeddings, one jitted DDIM loop.

`PriorSampler` binds a `DiffusionPrior` to its schedule and the static settings (step count and
spacing) and compiles the loop once per batch shape; the guidance scale is traced. Guidance is the
one classifier-free guidance (`diffusion.classifier_free_guidance`): its "context" is the (B,)
keep-the-text flag, so the conditional and unconditional predictions run as one 2B batch, and the
x0 predictions are combined as uncond + scale * (cond - uncond).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from vidjax import diffusion
from vidjax.models.prior import DiffusionPrior


@dataclasses.dataclass(frozen=True)
class PriorSamplingConfig:
  """Static settings: changing one compiles a new loop. DALL-E 2 samples its prior in 64 steps.

  'linspace' spacing runs from the last training timestep, where the cosine schedule is pure noise
  ('leading' would start at t = 946 with signal left that the noise lacks), down to t = 0, whose step
  goes to alpha_bar = 1 (`set_alpha_to_one`): the sample is then the last x0 prediction itself, with
  none of the noise left that a step to alpha_bar_0 keeps.
  """

  num_inference_steps: int = 64
  spacing: str = "linspace"


class PriorSampler:
  """sampler(params, text_hidden, text_embeds, text_mask, rng, guidance_scale=...) -> (B, D) unit embeddings."""

  def __init__(self, prior: DiffusionPrior, config: PriorSamplingConfig = PriorSamplingConfig()):
    self.prior, self.config = prior, config
    self.schedule = prior.config.schedule()
    self._sample = jax.jit(self._sample_impl)

  def __call__(self, params: Any, text_hidden: jax.Array, text_embeds: jax.Array, text_mask: jax.Array,
               rng: jax.Array, *, guidance_scale: float | jax.Array = 1.0) -> jax.Array:
    """Samples image embeddings for B captions.

    Args:
      params: the prior's params.
      text_hidden: (B, L, text_width); text_embeds: (B, D) in `embedding_space`; text_mask: (B, L) bool.
      rng: the start noise's key.
      guidance_scale: 1 is the conditional prior alone; above 1 pushes away from the unconditional one.
    Returns:
      (B, D) float32 unit-norm image embeddings (compare them with CLIP image embeddings by cosine).
    """
    return self._sample(params, text_hidden, text_embeds, text_mask, rng, jnp.asarray(guidance_scale, jnp.float32))

  def _sample_impl(self, params, text_hidden, text_embeds, text_mask, rng, guidance_scale):
    batch = text_embeds.shape[0]

    def model_fn(z, t, keep_text, video_gate):
      del video_gate  # the prior has no video mode
      copies = z.shape[0] // batch  # guidance stacks the unconditional and the conditional batch
      repeat = lambda x: jnp.concatenate([x] * copies)
      return self.prior.apply({"params": params}, z, t, repeat(text_hidden), repeat(text_embeds), repeat(text_mask),
                              keep_text < 0.5)

    denoise = diffusion.classifier_free_guidance(model_fn, context=jnp.ones((batch,), jnp.float32),
                                                 null_context=jnp.zeros((1,), jnp.float32), scale=guidance_scale)
    noise = jax.random.normal(rng, text_embeds.shape, jnp.float32)
    embeds = diffusion.ddim_sample(denoise, noise, self.schedule, num_inference_steps=self.config.num_inference_steps,
                                   prediction_type="sample", spacing=self.config.spacing, set_alpha_to_one=True)
    return embeds / jnp.linalg.norm(embeds, axis=-1, keepdims=True)
