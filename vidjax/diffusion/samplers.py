"""DDIM sampling (Song et al. 2021) as one jittable loop, with SDEdit start and masked editing.

The step and the timestep grids equal diffusers' DDIMScheduler with the Stable Diffusion 2 config
(steps_offset=1, set_alpha_to_one=False, clip_sample=False), so pretrained SD checkpoints sample
as they do there. Like diffusers, the step from timestep t goes to t - num_train_timesteps //
num_inference_steps, which for "linspace" and "trailing" spacing can differ by a few steps from the
next timestep of the grid.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vidjax.diffusion import schedules
from vidjax.errors import InputError

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
SPACINGS = ("leading", "trailing", "linspace")


def ddim_timesteps(
    num_train_timesteps: int, num_inference_steps: int, spacing: str = "leading", steps_offset: int = 1
) -> np.ndarray:
  """The descending inference timesteps of DDIMScheduler.set_timesteps; (num_inference_steps,) int32.

  "leading": multiples of num_train // steps, shifted by steps_offset; "trailing": rounded multiples
  of num_train / steps ending at num_train - 1; "linspace": rounded linspace(0, num_train - 1).
  Table 2 of Lin et al. 2023 compares them.
  """
  if not 1 <= num_inference_steps <= num_train_timesteps:
    raise InputError(
        "num_inference_steps",
        f"must be in [1, {num_train_timesteps}], got {num_inference_steps}",
        "pass a step count no larger than the schedule's num_train_timesteps",
    )
  if spacing == "leading":
    ratio = num_train_timesteps // num_inference_steps
    timesteps = np.arange(num_inference_steps)[::-1] * ratio + steps_offset
  elif spacing == "trailing":
    timesteps = np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / num_inference_steps)) - 1
  elif spacing == "linspace":
    timesteps = np.round(np.linspace(0, num_train_timesteps - 1, num_inference_steps))[::-1]
  else:
    raise InputError("spacing", f"unknown timestep spacing {spacing!r}", f"use one of {SPACINGS}")
  return timesteps.astype(np.int32)


def sdedit_start_index(num_inference_steps: int, strength: float | jax.Array) -> jax.Array:
  """Index of the first of the num_inference_steps steps that SDEdit (img2img) runs; int32 scalar.

  As diffusers' img2img get_timesteps, the last floor(strength * steps) steps run, but at least one.
  strength may be traced. In float32 strength * steps can fall just below the intended integer
  (0.84 * 75 gives 62.999996); a 1e-4 nudge, above float32's error for steps <= 1000 and below the
  gap to the next integer for strengths with up to three decimals, recovers it. diffusers truncates
  in float64 and differs only where float64 itself falls short (0.29 * 100 = 28.999999999999996).
  """
  product = num_inference_steps * jnp.asarray(strength, jnp.float32)
  steps_run = jnp.floor(product + 1e-4).astype(jnp.int32)
  return jnp.clip(num_inference_steps - steps_run, 0, num_inference_steps - 1)


def ddim_sample(
    denoise_fn: DenoiseFn,
    noise: jax.Array,
    schedule: schedules.Schedule,
    *,
    num_inference_steps: int,
    prediction_type: str,
    eta: float | jax.Array = 0.0,
    spacing: str = "leading",
    steps_offset: int = 1,
    set_alpha_to_one: bool = False,
    clip_sample_range: float | None = None,
    rng: jax.Array | None = None,
    variance_noise: jax.Array | None = None,
    init_latents: jax.Array | None = None,
    strength: float | jax.Array = 1.0,
    keep_mask: jax.Array | None = None,
    source_latents: jax.Array | None = None,
) -> jax.Array:
  """Runs the DDIM loop as one lax.fori_loop and returns the final latents.

  Args:
    denoise_fn: (z (N, ...), t (N,) int32) -> model output of z's shape, guidance included.
    noise: (N, ...) standard normal; the start latents, or the SDEdit noise with init_latents.
    schedule: the training noise schedule.
    num_inference_steps: static number of DDIM steps.
    prediction_type: static, "epsilon", "v_prediction" or "sample" (x0; what denoise_fn predicts).
    eta: 0 is deterministic DDIM, 1 is DDPM-like; may be traced, then rng or variance_noise is needed.
    spacing: static timestep spacing, see ddim_timesteps.
    steps_offset: static offset of "leading" timesteps (1 in the SD-2 configs).
    set_alpha_to_one: the last step goes to alpha_bar = 1 if True, else to alpha_bar_0 (SD-2).
    clip_sample_range: clip the predicted x0 to [-range, range]; None (SD-2) does not clip.
    rng: PRNG key; step i draws its eta > 0 noise from fold_in(rng, 2 i) and the masked-editing
      source noise from fold_in(rng, 2 i + 1), both standard normal of noise's shape.
    variance_noise: (num_inference_steps, N, ...) eta > 0 noise by absolute step index, instead of rng.
    init_latents: (N, ...) latents to edit; SDEdit starts from them noised to the first step run.
    strength: SDEdit strength in (0, 1], the fraction of steps run; needs init_latents if below 1.
    keep_mask: (N, ..., 1) in {0, 1}, 1 where the source is kept (Gen-1 Fig. 8 masked editing).
    source_latents: (N, ...) latents that the kept region is taken from.

  Returns:
    (N, ...) float32 latents; equal to source_latents wherever keep_mask is 1.
  """
  _check_noise_sources(noise, eta, rng, variance_noise, num_inference_steps)
  _check_editing_inputs(noise, rng, init_latents, strength, keep_mask, source_latents)
  schedules.validate_prediction_type(prediction_type)
  timesteps = ddim_timesteps(schedule.num_train_timesteps, num_inference_steps, spacing, steps_offset)
  alpha_bar_prev, prev_timesteps = _previous_alpha_bars(schedule, timesteps, num_inference_steps, set_alpha_to_one)
  num_samples = noise.shape[0]
  start = 0 if init_latents is None else sdedit_start_index(num_inference_steps, strength)
  z = noise.astype(jnp.float32)
  if init_latents is not None:
    t_start = jnp.full((num_samples,), jnp.asarray(timesteps)[start])
    z = schedules.q_sample(schedule, init_latents.astype(jnp.float32), z, t_start)

  def body(i, z):
    t = jnp.full((num_samples,), jnp.asarray(timesteps)[i])
    model_output = denoise_fn(z, t).astype(jnp.float32)
    step_noise = None if _is_zero(eta) else _step_noise(i, rng, variance_noise, z)
    z = ddim_step(schedule, z, model_output, t, alpha_bar_prev[i], prediction_type=prediction_type,
                  eta=eta, variance_noise=step_noise, clip_sample_range=clip_sample_range)
    if keep_mask is None:
      return z
    # The last step targets no timestep (prev < 0); clamping is harmless as the loop's result is
    # overwritten with the clean source below.
    prev_t = jnp.full((num_samples,), jnp.maximum(jnp.asarray(prev_timesteps)[i], 0))
    return _keep_noised_source(schedule, z, keep_mask, source_latents, prev_t, jax.random.fold_in(rng, 2 * i + 1))

  z = jax.lax.fori_loop(start, num_inference_steps, body, z)
  if keep_mask is None:
    return z
  return jnp.where(keep_mask > 0.5, source_latents.astype(jnp.float32), z)


def _keep_noised_source(schedule, z, keep_mask, source_latents, t, rng):
  """z with the kept region replaced by the source noised to timesteps t (N,) with fresh noise.

  Gen-1 Fig. 8 masked editing, as RePaint without resampling: the kept region follows the source at
  the noise level z has just reached, so the model sees the real surroundings of the edited region.
  """
  source_noise = jax.random.normal(rng, z.shape, jnp.float32)
  noised_source = schedules.q_sample(schedule, source_latents.astype(jnp.float32), source_noise, t)
  return jnp.where(keep_mask > 0.5, noised_source, z)


def ddim_step(
    schedule: schedules.Schedule,
    z: jax.Array,
    model_output: jax.Array,
    t: jax.Array,
    alpha_bar_prev: jax.Array,
    *,
    prediction_type: str,
    eta: float | jax.Array = 0.0,
    variance_noise: jax.Array | None = None,
    clip_sample_range: float | None = None,
) -> jax.Array:
  """One DDIM update (Song et al. 2021, Eq. 12) from z at timesteps t (N,) to alpha_bar_prev (scalar).

  sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) is the DDIM Eq. 16 noise level.
  """
  x0 = schedules.predict_x0(schedule, z, model_output, t, prediction_type)
  eps = schedules.predict_eps(schedule, z, model_output, t, prediction_type)
  if clip_sample_range is not None:
    x0 = jnp.clip(x0, -clip_sample_range, clip_sample_range)
  a_t = schedules.alpha_bar(schedule, t, z.ndim)
  sigma = eta * jnp.sqrt((1.0 - alpha_bar_prev) / (1.0 - a_t) * (1.0 - a_t / alpha_bar_prev))
  z_prev = jnp.sqrt(alpha_bar_prev) * x0 + jnp.sqrt(1.0 - alpha_bar_prev - sigma**2) * eps
  if variance_noise is None:
    return z_prev
  return z_prev + sigma * variance_noise


def _previous_alpha_bars(schedule, timesteps, num_inference_steps, set_alpha_to_one):
  """alpha_bar at each step's target timestep (num_inference_steps,) and those timesteps (numpy)."""
  prev_timesteps = timesteps - schedule.num_train_timesteps // num_inference_steps
  final_alpha_bar = 1.0 if set_alpha_to_one else schedule.alphas_cumprod[0]
  alpha_bar_prev = jnp.where(
      prev_timesteps >= 0, schedule.alphas_cumprod[np.maximum(prev_timesteps, 0)], final_alpha_bar
  )
  return alpha_bar_prev, prev_timesteps


def _step_noise(i, rng, variance_noise, z):
  """The eta > 0 noise of step i: given explicitly, or drawn from rng (stream 2i; 2i+1 is the mask's)."""
  if variance_noise is not None:
    return jnp.asarray(variance_noise)[i].astype(jnp.float32)
  return jax.random.normal(jax.random.fold_in(rng, 2 * i), z.shape, jnp.float32)


def _is_zero(value) -> bool:
  """True for a Python number equal to 0; traced values may be non-zero."""
  return isinstance(value, (int, float)) and value == 0


def _check_noise_sources(noise, eta, rng, variance_noise, num_inference_steps):
  """Raises InputError unless the eta > 0 noise has a source of the right shape."""
  if isinstance(eta, (int, float)) and eta < 0:
    raise InputError("eta", f"must be >= 0, got {eta}", "pass 0 for deterministic DDIM or a value in (0, 1]")
  if not _is_zero(eta) and rng is None and variance_noise is None:
    raise InputError("rng", "eta may be > 0 but no noise source was given", "pass rng or variance_noise")
  expected = (num_inference_steps,) + noise.shape
  if variance_noise is not None and variance_noise.shape != expected:
    raise InputError("variance_noise", f"shape {variance_noise.shape}, expected {expected}",
                     "pass one noise array per inference step, indexed by absolute step")


def _check_editing_inputs(noise, rng, init_latents, strength, keep_mask, source_latents):
  """Raises InputError for inconsistent SDEdit and masked-editing inputs (trace-time checks)."""
  if isinstance(strength, (int, float)) and not 0 < strength <= 1:
    raise InputError("strength", f"must be in (0, 1], got {strength}", "pass e.g. 0.6 to keep more of the input")
  if init_latents is None and not (isinstance(strength, (int, float)) and strength == 1):
    raise InputError("init_latents", "strength < 1 needs latents to start from", "pass init_latents")
  for name, array in (("init_latents", init_latents), ("source_latents", source_latents)):
    if array is not None and array.shape != noise.shape:
      raise InputError(name, f"shape {array.shape} differs from noise {noise.shape}", "pass latents of one shape")
  if (keep_mask is None) != (source_latents is None):
    raise InputError("keep_mask", "masked editing needs both keep_mask and source_latents", "pass both or neither")
  if keep_mask is not None and rng is None:
    raise InputError("rng", "masked editing noises the source at every step", "pass rng")
  if keep_mask is not None and keep_mask.shape != noise.shape[:-1] + (1,):
    raise InputError("keep_mask", f"shape {keep_mask.shape}, expected {noise.shape[:-1] + (1,)}",
                     "pass one channel of 1 (keep) / 0 (edit) per latent pixel")
