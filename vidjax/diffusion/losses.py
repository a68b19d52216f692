"""The one diffusion training loss, shared by image, video and joint image+video training."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from vidjax.diffusion import schedules
from vidjax.errors import InputError

PredictFn = Callable[[jax.Array, jax.Array], jax.Array]


def min_snr_weight(
    schedule: schedules.Schedule, t: jax.Array, gamma: float, prediction_type: str
) -> jax.Array:
  """Min-SNR-gamma loss weights (Hang et al. 2023) for timesteps t (N,) -> (N,).

  The x0-space weight min(SNR, gamma) (what an x0 'sample' target takes) becomes min(SNR, gamma) / SNR on an eps target and
  min(SNR, gamma) / (SNR + 1) on a v target, because ||eps err||^2 = SNR ||x0 err||^2 and
  ||v err||^2 = (SNR + 1) ||x0 err||^2. The eps form is written min(1, gamma / SNR) so that a
  zero-terminal-SNR step gets weight 1 instead of 0 / 0.
  """
  schedules.validate_prediction_type(prediction_type)
  signal_to_noise = schedules.snr(schedule, t)
  if prediction_type == "sample":
    return jnp.minimum(signal_to_noise, gamma)
  if prediction_type == "epsilon":
    return jnp.minimum(1.0, gamma / signal_to_noise)
  return jnp.minimum(signal_to_noise, gamma) / (signal_to_noise + 1.0)


def diffusion_loss(
    predict_fn: PredictFn,
    x0: jax.Array,
    rng: jax.Array,
    schedule: schedules.Schedule,
    *,
    prediction_type: str,
    min_snr_gamma: float | None = None,
    sample_weights: jax.Array | None = None,
    element_weights: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Noises x0 at uniform random timesteps and regresses the model onto the eps, v or x0 target.

  Args:
    predict_fn: (z_t (N, ...), t (N,) int32) -> prediction of z_t's shape; closes over params and
      conditioning (structure, content, video gate).
    x0: (N, ...) clean latents, any trailing shape (images or videos).
    rng: PRNG key for timesteps and noise.
    schedule: the training noise schedule.
    prediction_type: "epsilon", "v_prediction" or "sample" (x0; what predict_fn predicts).
    min_snr_gamma: gamma of min-SNR weighting; None trains with uniform weights.
    sample_weights: (N,) non-negative weights, e.g. 0 for padded examples; None weighs all equally.
    element_weights: positive weights broadcastable to x0 (e.g. (N, T, h, w, 1) to favour object
      regions); each sample's squared error becomes the weighted mean over its elements, so the
      loss keeps its scale. None weighs all elements equally.

  Returns:
    (loss, metrics): the weighted mean over samples of the per-sample mean squared error, and
    float32 scalars {"loss", "mse" (without SNR weights), "t_mean"}.
  """
  schedules.validate_prediction_type(prediction_type)
  if min_snr_gamma is not None and not min_snr_gamma > 0:
    raise InputError("min_snr_gamma", f"must be > 0, got {min_snr_gamma}", "pass e.g. 5.0, or None")
  num_samples = x0.shape[0]
  t_rng, noise_rng = jax.random.split(rng)
  t = jax.random.randint(t_rng, (num_samples,), 0, schedule.num_train_timesteps, jnp.int32)
  x0 = x0.astype(jnp.float32)
  noise = jax.random.normal(noise_rng, x0.shape, jnp.float32)
  target = {"epsilon": noise, "sample": x0}.get(prediction_type)
  target = schedules.v_target(schedule, x0, noise, t) if target is None else target
  prediction = predict_fn(schedules.q_sample(schedule, x0, noise, t), t).astype(jnp.float32)
  squared_error = jnp.square(prediction - target)
  element_axes = tuple(range(1, x0.ndim))
  if element_weights is None:
    per_sample_mse = jnp.mean(squared_error, axis=element_axes)
  else:
    element_weights = jnp.broadcast_to(element_weights.astype(jnp.float32), x0.shape)
    per_sample_mse = (jnp.sum(element_weights * squared_error, axis=element_axes)
                      / jnp.sum(element_weights, axis=element_axes))
  snr_weights = 1.0 if min_snr_gamma is None else min_snr_weight(schedule, t, min_snr_gamma, prediction_type)
  if sample_weights is None:
    sample_weights = jnp.ones((num_samples,), jnp.float32)
  # Normalising by the weight sum keeps the loss scale independent of how much of a batch is padding;
  # the floor keeps an all-padding batch (possible on one data shard) finite.
  normaliser = jnp.maximum(jnp.sum(sample_weights), 1e-8)

  def weighted_mean(values):
    return jnp.sum(sample_weights * values) / normaliser

  loss = weighted_mean(snr_weights * per_sample_mse)
  metrics = {"loss": loss, "mse": weighted_mean(per_sample_mse), "t_mean": weighted_mean(t.astype(jnp.float32))}
  return loss, metrics
