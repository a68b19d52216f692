"""Schedules and eps / v / x0 conversions against diffusers' DDIMScheduler."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from diffusion_fakes import random_arrays

from vidjax import diffusion
from vidjax.diffusion import schedules
from vidjax.errors import InputError


@pytest.mark.parametrize(
    "kind, zero_snr",
    [("scaled_linear", False), ("linear", False), ("squaredcos_cap_v2", False), ("scaled_linear", True)],
)
def test_schedule_equals_diffusers(kind, zero_snr):
  beta_start, beta_end = (0.00085, 0.012) if kind == "scaled_linear" else (0.0001, 0.02)
  reference = DDIMScheduler(beta_schedule=kind, beta_start=beta_start, beta_end=beta_end,
                            rescale_betas_zero_snr=zero_snr)
  schedule = diffusion.make_schedule(kind, 1000, beta_start, beta_end, rescale_zero_terminal_snr=zero_snr)
  assert schedule.num_train_timesteps == 1000
  # The zero-SNR rescale divides neighbouring alpha_bars, which amplifies diffusers' float32
  # rounding to ~7e-6 in the late betas; we compute it in float64 (alpha_bar still agrees to 1e-6).
  beta_atol = 1e-5 if zero_snr else 1e-6
  np.testing.assert_allclose(schedule.betas, reference.betas.numpy(), rtol=0, atol=beta_atol)
  np.testing.assert_allclose(schedule.alphas, reference.alphas.numpy(), rtol=0, atol=beta_atol)
  np.testing.assert_allclose(schedule.alphas_cumprod, reference.alphas_cumprod.numpy(), rtol=0, atol=1e-6)
  if zero_snr:
    assert float(schedule.alphas_cumprod[-1]) == 0.0


def test_q_sample_and_velocity_equal_diffusers_on_videos():
  reference = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
  schedule = diffusion.make_schedule()
  x0, noise = random_arrays(0, (3, 2, 5, 7, 4), (3, 2, 5, 7, 4))
  t = np.array([0, 517, 999])
  expected_z = reference.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t))
  expected_v = reference.get_velocity(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t))
  np.testing.assert_allclose(diffusion.q_sample(schedule, x0, noise, t), expected_z.numpy(), atol=1e-6)
  np.testing.assert_allclose(diffusion.v_target(schedule, x0, noise, t), expected_v.numpy(), atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_predictions_recover_x0_and_noise(prediction_type):
  schedule = diffusion.make_schedule()
  x0, noise = random_arrays(1, (3, 2, 5, 4), (3, 2, 5, 4))
  t = jnp.array([3, 400, 990])
  z_t = diffusion.q_sample(schedule, x0, noise, t)
  output = {"epsilon": noise, "sample": x0, "v_prediction": diffusion.v_target(schedule, x0, noise, t)}[prediction_type]
  np.testing.assert_allclose(diffusion.predict_x0(schedule, z_t, output, t, prediction_type), x0, atol=2e-4)
  np.testing.assert_allclose(diffusion.predict_eps(schedule, z_t, output, t, prediction_type), noise, atol=2e-4)


def test_v_identity_x0_from_z_and_v():
  schedule = diffusion.make_schedule()
  x0, noise = random_arrays(2, (4, 6), (4, 6))
  t = jnp.array([0, 10, 500, 999])
  a = np.asarray(schedule.alphas_cumprod)[np.asarray(t)][:, None]
  z_t = diffusion.q_sample(schedule, x0, noise, t)
  v = diffusion.v_target(schedule, x0, noise, t)
  np.testing.assert_allclose(np.sqrt(a) * z_t - np.sqrt(1 - a) * v, x0, atol=1e-5)


def test_snr_and_scalar_timestep_broadcast():
  schedule = diffusion.make_schedule("linear", 1000, 0.0001, 0.02)
  a = np.asarray(schedule.alphas_cumprod, np.float64)
  t = jnp.array([0, 250, 999])
  np.testing.assert_allclose(diffusion.snr(schedule, t), a[[0, 250, 999]] / (1 - a[[0, 250, 999]]), rtol=1e-5)
  x0, noise = random_arrays(3, (2, 3, 4), (2, 3, 4))
  np.testing.assert_allclose(diffusion.q_sample(schedule, x0, noise, jnp.int32(250)),
                             diffusion.q_sample(schedule, x0, noise, jnp.array([250, 250])), atol=0)


def test_bad_kind_and_prediction_type_name_the_argument():
  with pytest.raises(InputError, match="kind"):
    diffusion.make_schedule("cosine_typo")
  with pytest.raises(InputError, match="prediction_type"):
    schedules.validate_prediction_type("x0")
