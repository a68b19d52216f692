"""The training loss: exact targets, min-SNR weights, masking of padded samples."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from diffusion_fakes import random_arrays

from vidjax import diffusion
from vidjax.errors import InputError

SCHEDULE = diffusion.make_schedule()
X0_SHAPE = (3, 2, 5, 7, 4)  # (N, T, h, w, C)


def oracle(x0, prediction_type, offsets=0.0, seen_t=None):
  """predict_fn returning the exact target (it knows x0) plus a per-sample offset (N,)."""
  def predict_fn(z_t, t):
    if seen_t is not None:
      seen_t.append(np.asarray(t))
    a = diffusion.alpha_bar(SCHEDULE, t, z_t.ndim)
    noise = (z_t - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
    target = {"epsilon": noise, "sample": x0}.get(prediction_type)
    target = diffusion.v_target(SCHEDULE, x0, noise, t) if target is None else target
    return target + jnp.reshape(jnp.asarray(offsets, jnp.float32), (-1,) + (1,) * (x0.ndim - 1))

  return predict_fn


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_exact_target_gives_zero_and_offset_gives_its_square(prediction_type):
  (x0,) = random_arrays(0, X0_SHAPE)
  rng = jax.random.key(0)
  loss, metrics = diffusion.diffusion_loss(oracle(x0, prediction_type), x0, rng, SCHEDULE,
                                           prediction_type=prediction_type)
  assert float(loss) < 1e-8
  offset_loss, _ = diffusion.diffusion_loss(oracle(x0, prediction_type, 0.5), x0, rng, SCHEDULE,
                                            prediction_type=prediction_type)
  np.testing.assert_allclose(offset_loss, 0.25, rtol=1e-3)
  assert set(metrics) == {"loss", "mse", "t_mean"}
  assert 0 <= float(metrics["t_mean"]) < 1000


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weight_closed_form(prediction_type):
  t = jnp.arange(0, 1000, 37)
  a = np.asarray(SCHEDULE.alphas_cumprod, np.float64)[np.asarray(t)]
  snr = a / (1 - a)
  expected = np.minimum(snr, 5.0) / {"epsilon": snr, "v_prediction": snr + 1, "sample": 1.0}[prediction_type]
  weights = diffusion.min_snr_weight(SCHEDULE, t, 5.0, prediction_type)
  np.testing.assert_allclose(weights, expected, rtol=1e-4)


def test_min_snr_loss_weighs_each_sample_by_its_timestep():
  (x0,) = random_arrays(1, X0_SHAPE)
  seen_t = []
  loss, metrics = diffusion.diffusion_loss(oracle(x0, "v_prediction", 1.0, seen_t), x0, jax.random.key(3),
                                           SCHEDULE, prediction_type="v_prediction", min_snr_gamma=5.0)
  weights = diffusion.min_snr_weight(SCHEDULE, jnp.asarray(seen_t[0]), 5.0, "v_prediction")
  np.testing.assert_allclose(loss, np.mean(weights), rtol=1e-3)
  np.testing.assert_allclose(metrics["mse"], 1.0, rtol=1e-3)
  np.testing.assert_allclose(metrics["t_mean"], np.mean(seen_t[0]), rtol=1e-6)


def test_sample_weights_drop_padded_examples():
  (x0,) = random_arrays(2, X0_SHAPE)
  offsets = jnp.array([1.0, 2.0, 100.0])
  loss, _ = diffusion.diffusion_loss(oracle(x0, "epsilon", offsets), x0, jax.random.key(1), SCHEDULE,
                                     prediction_type="epsilon", sample_weights=jnp.array([1.0, 1.0, 0.0]))
  np.testing.assert_allclose(loss, (1.0 + 4.0) / 2, rtol=1e-3)


def test_element_weights_give_a_weighted_mean_per_sample():
  (x0,) = random_arrays(5, X0_SHAPE)
  # The prediction is off by 1 in the left half of every frame and by 3 in the right half.
  right = (jnp.arange(X0_SHAPE[3]) >= 3).astype(jnp.float32)[None, None, None, :, None]
  exact = oracle(x0, "epsilon")
  predict = lambda z_t, t: exact(z_t, t) + 1.0 + 2.0 * right
  weights = jnp.broadcast_to(1.0 + 4.0 * right, X0_SHAPE[:-1] + (1,))  # the right half counts 5x
  loss, metrics = diffusion.diffusion_loss(predict, x0, jax.random.key(2), SCHEDULE, prediction_type="epsilon",
                                           element_weights=weights)
  n_left, n_right = 3, X0_SHAPE[3] - 3
  expected = (n_left * 1.0 + 5.0 * n_right * 9.0) / (n_left + 5.0 * n_right)
  np.testing.assert_allclose(loss, expected, rtol=1e-4)
  np.testing.assert_allclose(metrics["mse"], expected, rtol=1e-4)
  unweighted, _ = diffusion.diffusion_loss(predict, x0, jax.random.key(2), SCHEDULE, prediction_type="epsilon")
  np.testing.assert_allclose(unweighted, (n_left * 1.0 + n_right * 9.0) / X0_SHAPE[3], rtol=1e-4)


def test_loss_jits_and_differentiates():
  (x0,) = random_arrays(3, (2, 3, 4))

  @jax.jit
  def loss_of_scale(scale, rng):
    return diffusion.diffusion_loss(lambda z, t: scale * z, x0, rng, SCHEDULE, prediction_type="epsilon")[0]

  grad = jax.grad(loss_of_scale)(jnp.float32(0.5), jax.random.key(0))
  assert np.isfinite(grad) and grad != 0


def test_bad_gamma_names_the_argument():
  (x0,) = random_arrays(4, (2, 3))
  with pytest.raises(InputError, match="min_snr_gamma"):
    diffusion.diffusion_loss(lambda z, t: z, x0, jax.random.key(0), SCHEDULE, prediction_type="epsilon",
                             min_snr_gamma=0.0)
