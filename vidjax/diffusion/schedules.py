"""Noise schedules and the conversions between the quantities a diffusion model can predict.

Notation: `alpha_bar` is diffusers' `alphas_cumprod` (the paper's alpha-bar_t); the forward process is
  z_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps,
and the v-parameterisation (Salimans & Ho 2022, used by Gen-1) predicts
  v = sqrt(alpha_bar_t) * eps - sqrt(1 - alpha_bar_t) * x0;
"sample" (diffusers' name) predicts x0 itself, as DALL-E 2's prior does (`vidjax.models.prior`).

Every function takes per-sample timesteps `t` of shape (N,) (or a scalar) and broadcasts the
coefficients over any trailing shape, so the same code serves images (N, h, w, C) and videos
(N, T, h, w, C).
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from vidjax.errors import InputError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("scaled_linear", "linear", "squaredcos_cap_v2")


@flax.struct.dataclass
class Schedule:
  """A discrete noise schedule; a pytree whose arrays are traced under jit.

  Attributes:
    betas: (num_train_timesteps,) float32 per-step noise variances.
    alphas: (num_train_timesteps,) float32, 1 - betas.
    alphas_cumprod: (num_train_timesteps,) float32 alpha-bar_t, the signal fraction at step t.
    num_train_timesteps: static number of training timesteps.
  """

  betas: jax.Array
  alphas: jax.Array
  alphas_cumprod: jax.Array
  num_train_timesteps: int = flax.struct.field(pytree_node=False)


def make_schedule(
    kind: str = "scaled_linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    *,
    rescale_zero_terminal_snr: bool = False,
) -> Schedule:
  """Builds the schedule diffusers' DDIMScheduler builds for the same arguments.

  Args:
    kind: "scaled_linear" (Stable Diffusion), "linear" (DDPM) or "squaredcos_cap_v2" (cosine,
      Nichol & Dhariwal 2021; ignores beta_start/beta_end like diffusers).
    num_train_timesteps: number of training timesteps.
    beta_start: first beta of the (scaled) linear schedules.
    beta_end: last beta of the (scaled) linear schedules.
    rescale_zero_terminal_snr: shift and scale sqrt(alpha_bar) so that the last step is pure noise
      (Lin et al. 2023, Algorithm 1); use with v-prediction and "trailing" spacing.

  Returns:
    The Schedule. Computed in float64 and stored as float32, which is at least as accurate as
    diffusers' float32 arithmetic.
  """
  if kind == "linear":
    betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
  elif kind == "scaled_linear":
    betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
  elif kind == "squaredcos_cap_v2":
    betas = _cosine_betas(num_train_timesteps)
  else:
    raise InputError("kind", f"unknown beta schedule {kind!r}", f"use one of {BETA_SCHEDULES}")
  if rescale_zero_terminal_snr:
    betas = _rescale_zero_terminal_snr(betas)
  alphas = 1.0 - betas
  return Schedule(
      betas=jnp.asarray(betas, jnp.float32),
      alphas=jnp.asarray(alphas, jnp.float32),
      alphas_cumprod=jnp.asarray(np.cumprod(alphas), jnp.float32),
      num_train_timesteps=num_train_timesteps,
  )


def _cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
  """Betas that discretise alpha_bar(s) = cos^2((s + 0.008) / 1.008 * pi / 2), capped at max_beta."""
  s = np.arange(num_train_timesteps + 1, dtype=np.float64) / num_train_timesteps
  alpha_bar = np.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
  return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], max_beta)


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
  """Lin et al. 2023 Alg. 1: keeps sqrt(alpha_bar_0) and moves sqrt(alpha_bar_{T-1}) to zero."""
  sqrt_alpha_bar = np.sqrt(np.cumprod(1.0 - betas))
  first, last = sqrt_alpha_bar[0], sqrt_alpha_bar[-1]
  sqrt_alpha_bar = (sqrt_alpha_bar - last) * first / (first - last)
  alpha_bar = sqrt_alpha_bar**2
  alphas = np.concatenate([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
  return 1.0 - alphas


def validate_prediction_type(prediction_type: str) -> None:
  """Raises InputError unless `prediction_type` is one the library supports."""
  if prediction_type not in PREDICTION_TYPES:
    raise InputError(
        "prediction_type", f"unknown prediction type {prediction_type!r}", f"use one of {PREDICTION_TYPES}"
    )


def _coefficient(values: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
  """values[t] reshaped from t.shape (N,) or () to broadcast over an array of rank `ndim`."""
  t = jnp.asarray(t)
  return values[t].reshape(t.shape + (1,) * (ndim - t.ndim))


def alpha_bar(schedule: Schedule, t: jax.Array, ndim: int = 1) -> jax.Array:
  """alpha-bar_t for timesteps t (N,) or (), shaped to broadcast over a rank-`ndim` array."""
  return _coefficient(schedule.alphas_cumprod, t, ndim)


def snr(schedule: Schedule, t: jax.Array) -> jax.Array:
  """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t); t (N,) -> (N,)."""
  a = alpha_bar(schedule, t, jnp.ndim(t))
  return a / (1.0 - a)


def q_sample(schedule: Schedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  """Forward process: noises x0 (N, ...) to timesteps t (N,) with `noise` of x0's shape."""
  a = alpha_bar(schedule, t, x0.ndim)
  return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise


def v_target(schedule: Schedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  """The v-prediction target sqrt(alpha_bar) * eps - sqrt(1 - alpha_bar) * x0; shapes as q_sample."""
  a = alpha_bar(schedule, t, x0.ndim)
  return jnp.sqrt(a) * noise - jnp.sqrt(1.0 - a) * x0


def predict_x0(
    schedule: Schedule, z_t: jax.Array, model_output: jax.Array, t: jax.Array, prediction_type: str
) -> jax.Array:
  """The clean sample implied by a model output at z_t (N, ...) and timesteps t (N,)."""
  validate_prediction_type(prediction_type)
  a = alpha_bar(schedule, t, z_t.ndim)
  if prediction_type == "epsilon":
    return (z_t - jnp.sqrt(1.0 - a) * model_output) / jnp.sqrt(a)
  if prediction_type == "sample":
    return model_output
  return jnp.sqrt(a) * z_t - jnp.sqrt(1.0 - a) * model_output


def predict_eps(
    schedule: Schedule, z_t: jax.Array, model_output: jax.Array, t: jax.Array, prediction_type: str
) -> jax.Array:
  """The noise implied by a model output at z_t (N, ...) and timesteps t (N,)."""
  validate_prediction_type(prediction_type)
  if prediction_type == "epsilon":
    return model_output
  a = alpha_bar(schedule, t, z_t.ndim)
  if prediction_type == "sample":  # 1 - alpha_bar >= beta_0 > 0: finite at every timestep
    return (z_t - jnp.sqrt(a) * model_output) / jnp.sqrt(1.0 - a)
  return jnp.sqrt(a) * model_output + jnp.sqrt(1.0 - a) * z_t
