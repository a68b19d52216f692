"""Classifier-free guidance and Gen-1 temporal guidance as denoise_fn builders for the samplers.

Both batch every prediction they combine into one model call, so a guided step costs one forward
pass of 2N (CFG) or 3N (temporal guidance) samples.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from vidjax.errors import InputError

# model_fn(z (N, T, h, w, C), t (N,) int32, context (N, ...), video_gate (N,) float32) -> z's shape;
# video_gate 1 runs the video model, 0 the image model on each frame independently.
ModelFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]


def classifier_free_guidance(
    model_fn: ModelFn, *, context: jax.Array, null_context: jax.Array, scale: float | jax.Array
) -> DenoiseFn:
  """Video-model CFG: uncond + scale * (cond - uncond) (Ho & Salimans 2022, Gen-1 Eq. 7).

  Args:
    model_fn: the conditioned model, see ModelFn.
    context: (N, ...) content conditioning (CLIP image embedding or text tokens).
    null_context: the unconditional context, (N, ...) or (1, ...) broadcast over the batch.
    scale: guidance scale omega >= 0; 1 is the conditional model alone. May be traced.

  Returns:
    denoise_fn(z (N, ...), t (N,)) -> guided prediction of z's shape.
  """
  _check_scale("scale", scale)
  null_context = _broadcast_null_context(context, null_context)

  def denoise_fn(z, t):
    uncond, cond = _batched_predictions(
        model_fn, z, t, contexts=(null_context, context), video_gates=(1.0, 1.0)
    )
    return uncond + scale * (cond - uncond)

  return denoise_fn


def temporal_guidance(
    model_fn: ModelFn,
    *,
    context: jax.Array,
    null_context: jax.Array,
    scale: float | jax.Array,
    temporal_guidance_scale: float | jax.Array,
) -> DenoiseFn:
  """Gen-1 Eq. 8: CFG on content plus guidance of the video model away from the image model.

    pred = img_uncond + omega_t * (vid_uncond - img_uncond) + omega * (vid_cond - vid_uncond)

  where omega_t is `temporal_guidance_scale` and omega is `scale`. omega_t > 1 trades per-frame detail for
  temporal consistency, < 1 the reverse (Gen-1 Fig. 4); omega_t = 1 is CFG on the video model, which
  is then computed with the cheaper 2N batch when omega_t is the Python number 1.

  Args:
    model_fn: the conditioned model with a per-sample video gate, see ModelFn.
    context: (N, ...) content conditioning.
    null_context: the unconditional context, (N, ...) or (1, ...).
    scale: content guidance scale omega >= 0. May be traced.
    temporal_guidance_scale: temporal guidance scale omega_t >= 0. May be traced.

  Returns:
    denoise_fn(z (N, ...), t (N,)) -> guided prediction from one model call of 3N samples.
  """
  _check_scale("temporal_guidance_scale", temporal_guidance_scale)
  if isinstance(temporal_guidance_scale, (int, float)) and temporal_guidance_scale == 1:
    return classifier_free_guidance(model_fn, context=context, null_context=null_context, scale=scale)
  _check_scale("scale", scale)
  null_context = _broadcast_null_context(context, null_context)

  def denoise_fn(z, t):
    image_uncond, video_uncond, video_cond = _batched_predictions(
        model_fn, z, t, contexts=(null_context, null_context, context), video_gates=(0.0, 1.0, 1.0)
    )
    return (image_uncond + temporal_guidance_scale * (video_uncond - image_uncond)
            + scale * (video_cond - video_uncond))

  return denoise_fn


def _batched_predictions(model_fn, z, t, *, contexts, video_gates):
  """Runs len(contexts) copies of (z, t) with their contexts and gates as one batch; splits the output."""
  copies = len(contexts)
  num_samples = z.shape[0]
  gates = jnp.concatenate([jnp.full((num_samples,), gate, jnp.float32) for gate in video_gates])
  output = model_fn(
      jnp.concatenate([z] * copies),
      jnp.concatenate([jnp.broadcast_to(t, (num_samples,)).astype(jnp.int32)] * copies),
      jnp.concatenate(contexts),
      gates,
  )
  return jnp.split(output, copies)


def _broadcast_null_context(context: jax.Array, null_context: jax.Array) -> jax.Array:
  """null_context (1 or N, ...) broadcast to context's (N, ...) shape, or InputError."""
  if null_context.shape[1:] != context.shape[1:] or null_context.shape[0] not in (1, context.shape[0]):
    raise InputError(
        "null_context",
        f"shape {null_context.shape} does not match context {context.shape}",
        "encode the empty prompt (or zero image embedding) with the context's encoder, batch 1 or N",
    )
  return jnp.broadcast_to(null_context, context.shape).astype(context.dtype)


def _check_scale(name: str, value) -> None:
  """Raises InputError for a negative Python-number scale; traced scales cannot be checked here."""
  if isinstance(value, (int, float)) and value < 0:
    raise InputError(name, f"must be >= 0, got {value}", f"pass {name} >= 0 (1 = no extra guidance)")
