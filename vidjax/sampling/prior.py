"""Sampling the prior: a caption's CLIP text encoding -> CLIP image embeddings, one jitted DDIM loop.

`PriorSampler` binds a `DiffusionPrior` to its schedule and the static settings (step count and
spacing) and compiles the loop once per batch shape; the guidance scale is traced. Guidance is the
one classifier-free guidance (`diffusion.classifier_free_guidance`): its "context" is the (B,)
keep-the-text flag, so the conditional and unconditional predictions run as one 2B batch, and the
x0 predictions are combined as uncond + scale * (cond - uncond).

`encode_prior_text` is the one way from caption ids to the prior's text conditioning (the prior stage
trains on it, `PromptPrior` samples with it). `PromptPrior` is what a checkpoint directory with a
`prior` component carries for an image-embedding video model: caption ids -> text tower -> prior
sample -> rescaled to the norm of the image embeddings the video model was trained on, the content
its UNet reads. `mix_content` is Gen-1's mix of an image's and a caption's embedding.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from vidjax import diffusion
from vidjax.models.clip import CLIPTextConfig, encode_text, end_token_positions
from vidjax.models.prior import DiffusionPrior, PriorConfig, embedding_space, text_token_mask

# The prior's noise stream of an edit's seed: apart from the UNet's (`generate.sample_latents` splits
# jax.random.key(seed) in two), so a prompt's embedding does not share noise with the video's.
PRIOR_STREAM = 1


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


def encode_prior_text(text_config: CLIPTextConfig, text_params: Mapping[str, Any], tokens: jax.Array
                      ) -> dict[str, jax.Array]:
  """(B, L) caption ids -> the prior's text conditioning: hidden (B, L, W) (the tower's last hidden
  states), embeds (B, D) (its projected text embedding, in `embedding_space`), mask (B, L) (up to the end token)."""
  out = encode_text(text_config, text_params, tokens)
  ends = end_token_positions(tokens, text_config.eos_token_id)
  return {"hidden": out["last_hidden_state"], "embeds": embedding_space(out["text_embeds"]),
          "mask": text_token_mask(tokens, ends)}


def prior_key(seed: int) -> jax.Array:
  """The start-noise key of the prior's sample for an edit of `seed`."""
  return jax.random.fold_in(jax.random.key(seed), PRIOR_STREAM)


class PromptPrior:
  """A prior with its CLIP text tower: caption ids -> image embeddings at the video model's content scale.

  image_embed_norm: the mean L2 norm of the raw CLIP image embeddings (the frames' `image_embeds`, as
    the video model was trained on them), measured when the prior was trained. The prior samples unit
    directions (DALL-E 2 normalises CLIP embeddings; only the direction carries meaning); the UNet's
    cross-attention saw raw embeddings, so a sample is scaled back to their mean norm. The toy CLIP's
    is about 7.9: an unscaled unit vector would reach the UNet at an eighth of its trained scale.
  """

  def __init__(self, prior_config: PriorConfig, prior_params: Any, text_config: CLIPTextConfig, text_params: Any,
               image_embed_norm: float):
    if not (math.isfinite(image_embed_norm) and image_embed_norm > 0):
      raise ValueError(f"PromptPrior: image_embed_norm {image_embed_norm!r} is not a positive number")
    self.prior, self.params = DiffusionPrior(prior_config), prior_params
    self.text_config, self.text_params, self.image_embed_norm = text_config, text_params, float(image_embed_norm)
    self._samplers: dict[int, PriorSampler] = {}

  @property
  def max_text_tokens(self) -> int:
    return self.prior.config.max_text_tokens

  def sampler(self, num_inference_steps: int) -> PriorSampler:
    """The compiled loop for a step count (a static setting), made once."""
    if num_inference_steps not in self._samplers:
      config = PriorSamplingConfig(num_inference_steps=int(num_inference_steps))
      self._samplers[num_inference_steps] = PriorSampler(self.prior, config)
    return self._samplers[num_inference_steps]

  def __call__(self, tokens: Any, seed: int, *, guidance_scale: float, num_inference_steps: int) -> jax.Array:
    """(B, L) caption ids -> (B, D) float32 image embeddings of norm `image_embed_norm`, from `prior_key(seed)`."""
    text = encode_prior_text(self.text_config, self.text_params, jnp.asarray(tokens, jnp.int32))
    unit = self.sampler(num_inference_steps)(self.params, text["hidden"], text["embeds"], text["mask"],
                                             prior_key(seed), guidance_scale=guidance_scale)
    return unit * self.image_embed_norm


def mix_content(image_embeds: jax.Array, prompt_embeds: jax.Array, content_mix: float) -> jax.Array:
  """Gen-1's mix of an image's and a caption's content: (B, D), (B, D), m in [0, 1] -> (B, D).

  Spherical interpolation of the directions (DALL-E 2 interpolates CLIP embeddings by slerp), with the
  norms interpolated linearly: a linear mix of two directions at angle theta shrinks to cos(theta / 2)
  of their norm halfway (0.71 at 90 degrees), a content scale the UNet never saw; slerp stays on the
  sphere. m = 0 returns `image_embeds` and m = 1 `prompt_embeds` exactly.
  """
  if content_mix == 0:
    return jnp.asarray(image_embeds, jnp.float32)
  if content_mix == 1:
    return jnp.asarray(prompt_embeds, jnp.float32)
  a, b = jnp.asarray(image_embeds, jnp.float32), jnp.asarray(prompt_embeds, jnp.float32)
  norm_a, norm_b = jnp.linalg.norm(a, axis=-1, keepdims=True), jnp.linalg.norm(b, axis=-1, keepdims=True)
  unit_a, unit_b = a / norm_a, b / norm_b
  theta = jnp.arccos(jnp.clip(jnp.sum(unit_a * unit_b, axis=-1, keepdims=True), -1.0, 1.0))
  sin = jnp.sin(theta)
  # Nearly parallel directions: slerp's weights tend to the linear ones (and sin(theta) to 0).
  parallel = sin < 1e-6
  weight_a = jnp.where(parallel, 1.0 - content_mix, jnp.sin((1.0 - content_mix) * theta) / jnp.where(parallel, 1, sin))
  weight_b = jnp.where(parallel, content_mix, jnp.sin(content_mix * theta) / jnp.where(parallel, 1, sin))
  direction = weight_a * unit_a + weight_b * unit_b
  direction = direction / jnp.linalg.norm(direction, axis=-1, keepdims=True)
  return direction * ((1.0 - content_mix) * norm_a + content_mix * norm_b)
