"""The one path from conditioning to frames: structure + content -> latents -> uint8 video.

`VideoEditPipeline`, the trainer's sample summaries and the toy main job's final edit all go through
these functions, so they share one Sampler cache (`sampler_for`: one compiled loop per model and
static setting), one set of jitted encoders per model, one noise convention (`seed` -> noise key and
step key) and one frames conversion (`to_uint8`: rounded, not truncated).

  context, null_context = encode_content(model, params, tokens=tokens)
  structure = encode_structure(model, params, depth, structure_fidelity, latent_hw)
  latents = sample_latents(model, params, structure=structure, context=context, null_context=null_context,
                           shape=(1, T, h, w, C), seed=0, num_inference_steps=25)
  frames = decode_frames(model, params, latents)      # uint8 (B, T, H, W, 3)
or all of it at once: `generate(model, params, depth, tokens=tokens, seed=0)`.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vidjax.models.clip import encode_image, preprocess_images
from vidjax.models.video_model import VideoDiffusionModel
from vidjax.sampling.sampler import Sampler, SamplingConfig


class _Compiled(NamedTuple):
  structure: Any
  content: Any
  encode: Any
  decode: Any


@functools.lru_cache(maxsize=8)
def _compiled(model: VideoDiffusionModel) -> _Compiled:
  """The model's jitted encoders and decoder, one set per model object."""

  def content(params, tokens, image_embeds, negative_tokens):
    context = model.encode_content(params, tokens=tokens, image_embeds=image_embeds)
    if negative_tokens is not None:
      return context, model.encode_content(params, tokens=negative_tokens)
    return context, model.null_content(params, 1)

  return _Compiled(structure=jax.jit(model.encode_structure, static_argnums=(3,)), content=jax.jit(content),
                   encode=jax.jit(model.encode_frames), decode=jax.jit(model.decode))


def sampling_config(model: VideoDiffusionModel, num_inference_steps: int, *, with_temporal_guidance: bool,
                    scheduler: Mapping[str, Any] | None = None, image_mode: bool = False) -> SamplingConfig:
  """The static settings of a loop: the step count, the model's parameterisation, and the spacing of a
  checkpoint's `scheduler` manifest entry (diffusers' fields; default: what training exports)."""
  scheduler = scheduler or {}
  return SamplingConfig(num_inference_steps=int(num_inference_steps), prediction_type=model.config.prediction_type,
                        spacing=scheduler.get("timestep_spacing", "leading"),
                        steps_offset=int(scheduler.get("steps_offset", 1)),
                        set_alpha_to_one=bool(scheduler.get("set_alpha_to_one", False)),
                        with_temporal_guidance=with_temporal_guidance, image_mode=bool(image_mode))


# The one Sampler cache: per model (weakly: a dropped model frees its loops), per static setting.
_SAMPLERS: weakref.WeakKeyDictionary[VideoDiffusionModel, dict[SamplingConfig, Sampler]] = weakref.WeakKeyDictionary()


def sampler_for(model: VideoDiffusionModel, config: SamplingConfig) -> Sampler:
  """The compiled loop for (model, static setting), made once and reused at the same shapes."""
  samplers = _SAMPLERS.setdefault(model, {})
  if config not in samplers:
    samplers[config] = Sampler(model.unet, model.schedule, config)
  return samplers[config]


def sampler_traces(model: VideoDiffusionModel) -> int:
  """How many sampling loops were traced (compiled) for `model` so far, over all its settings."""
  return sum(sampler.traces for sampler in _SAMPLERS.get(model, {}).values())


def encode_structure(model: VideoDiffusionModel, params: Mapping[str, Any], depth: jax.Array,
                     structure_fidelity: jax.Array, latent_hw: tuple[int, int]) -> jax.Array | None:
  """(B, T, H, W, 1) depth after its t_s blur, any range (the model normalises it, once) and (B,) t_s
  -> the UNet's structure channels (B, T, h, w, Cs), or None for structure 'none'."""
  return _compiled(model).structure(params, jnp.asarray(depth, jnp.float32),
                                    jnp.asarray(structure_fidelity, jnp.int32), tuple(latent_hw))


def encode_content(model: VideoDiffusionModel, params: Mapping[str, Any], *, tokens: Any = None,
                   image_embeds: Any = None, negative_tokens: Any = None) -> tuple[jax.Array, jax.Array]:
  """-> (context (B, L, D), null context (1, L, D)): from caption ids (B, L) or CLIP image embeddings
  (B, D); the null context is the negative prompt's ids (1, L) when given, else the model's empty one."""
  as_array = lambda x, dtype: None if x is None else jnp.asarray(x, dtype)
  return _compiled(model).content(params, as_array(tokens, jnp.int32), as_array(image_embeds, jnp.float32),
                                  as_array(negative_tokens, jnp.int32))


def embed_images(model: VideoDiffusionModel, params: Mapping[str, Any], images: Sequence[np.ndarray]) -> jax.Array:
  """Content images, each uint8 (H, W, 3) of any size -> (1, D): the mean of their CLIP image embeddings
  (Gen-1's content; several images of one subject are averaged, as Gen-1 conditions on a customization set)."""
  config = model.config.image_encoder
  pixels = jnp.concatenate([preprocess_images(np.asarray(image)[None], config.image_size) for image in images])
  embeds = encode_image(config, params["image_encoder"], pixels)["image_embeds"]
  return jnp.mean(embeds, axis=0, keepdims=True)


def encode_frames(model: VideoDiffusionModel, params: Mapping[str, Any], frames: np.ndarray) -> jax.Array:
  """uint8 (B, T, H, W, 3) -> scaled latents (B, T, H/f, W/f, C) (SDEdit and masked editing's source)."""
  return _compiled(model).encode(params, jnp.asarray(frames, jnp.float32) / 127.5 - 1.0)


def sample_latents(model: VideoDiffusionModel, params: Mapping[str, Any], *, structure: jax.Array | None,
                   context: jax.Array, null_context: jax.Array, shape: tuple[int, ...], seed: int,
                   num_inference_steps: int, guidance_scale: float = 5.0, temporal_guidance_scale: float = 1.0,
                   eta: float = 0.0, temporal_window: int | None = None, scheduler: Mapping[str, Any] | None = None,
                   init_latents: jax.Array | None = None, strength: float = 1.0,
                   keep_mask: jax.Array | None = None, source_latents: jax.Array | None = None,
                   image_mode: bool = False) -> jax.Array:
  """DDIM with guidance from noise of `seed` (split into the start noise and the steps' key).

  Args:
    shape: (B, T, h, w, C) of the latents.
    guidance_scale, temporal_guidance_scale: omega and omega_t (Gen-1 Eq. 8 runs when omega_t != 1).
    eta, temporal_window: DDIM eta and the causal window L_M (None: the whole past).
    init_latents, strength: SDEdit (strength < 1 starts from the noised init_latents);
    keep_mask (B, T, h, w, 1), source_latents: masked editing (keep the source where 1).
    image_mode: sample with the per-frame image model (temporal layers off; omega_t must be 1).
  Returns:
    float32 latents of `shape`.
  """
  config = sampling_config(model, num_inference_steps, with_temporal_guidance=temporal_guidance_scale != 1.0,
                           scheduler=scheduler, image_mode=image_mode)
  noise_key, step_key = jax.random.split(jax.random.key(seed))
  sdedit = strength < 1.0
  return sampler_for(model, config)(
      params["unet"], jax.random.normal(noise_key, shape), context, null_context, structure=structure, rng=step_key,
      guidance_scale=guidance_scale, temporal_guidance_scale=temporal_guidance_scale, eta=eta,
      temporal_window=temporal_window,
      init_latents=init_latents if sdedit else None, strength=strength if sdedit else 1.0, keep_mask=keep_mask,
      source_latents=source_latents if keep_mask is not None else None)


def to_uint8(frames: Any) -> np.ndarray:
  """Decoded frames, float in [-1, 1] -> uint8 in [0, 255], rounded to the nearest level (not truncated)."""
  return np.asarray(jnp.clip((jnp.asarray(frames) + 1.0) * 127.5, 0, 255).round().astype(jnp.uint8))


def decode_frames(model: VideoDiffusionModel, params: Mapping[str, Any], latents: jax.Array) -> np.ndarray:
  """Scaled latents (B, T, h, w, C) -> uint8 (B, T, H, W, 3)."""
  return to_uint8(_compiled(model).decode(params, latents))


def generate(model: VideoDiffusionModel, params: Mapping[str, Any], depth: Any, *, tokens: Any = None,
             image_embeds: Any = None, structure_fidelity: Any = None, seed: int = 0, num_inference_steps: int = 25,
             guidance_scale: float = 5.0, temporal_guidance_scale: float = 1.0, eta: float = 0.0,
             temporal_window: int | None = None, scheduler: Mapping[str, Any] | None = None) -> np.ndarray:
  """Samples a video from structure and content.

  Args:
    model, params: the model and its params ({'unet', 'vae', 'text_encoder' or 'image_encoder'}).
    depth: (B, T, H, W, 1) at frame resolution, after its t_s blur; any range (normalised by the model).
    tokens: (B, L) caption ids, or image_embeds (B, D), per the model's content kind.
    structure_fidelity: (B,) t_s the depth was blurred with (its channels for 'depth_latent'; default 0).
    seed, num_inference_steps, guidance_scale, temporal_guidance_scale, eta, temporal_window, scheduler:
      as `sample_latents`.
  Returns:
    uint8 (B, T, H, W, 3).
  """
  b, t, h, w, _ = np.shape(depth)
  factor = model.config.vae.downsample_factor
  latent_hw = (h // factor, w // factor)
  fidelity = np.zeros((b,), np.int32) if structure_fidelity is None else structure_fidelity
  structure = encode_structure(model, params, depth, fidelity, latent_hw)
  context, null_context = encode_content(model, params, tokens=tokens, image_embeds=image_embeds)
  latents = sample_latents(model, params, structure=structure, context=context, null_context=null_context,
                           shape=(b, t, *latent_hw, model.config.vae.latent_channels), seed=seed,
                           num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                           temporal_guidance_scale=temporal_guidance_scale, eta=eta, temporal_window=temporal_window,
                           scheduler=scheduler)
  return decode_frames(model, params, latents)
