"""Classifier-free guidance and Gen-1 temporal guidance (Eq. 8)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from diffusion_fakes import CONTEXT_SHAPE, LATENT_SHAPE, fake_model_jax, random_arrays

from vidjax import diffusion
from vidjax.errors import InputError

N = LATENT_SHAPE[0]


def inputs(seed=0):
  z, context, null_context = random_arrays(seed, LATENT_SHAPE, CONTEXT_SHAPE, CONTEXT_SHAPE)
  return z, jnp.array([981, 981]), context, null_context


def recording(model_fn, calls):
  """model_fn that appends (batch size, video gate) of every call to `calls`."""
  def recorded(z, t, context, video_gate):
    calls.append((z.shape[0], video_gate))
    return model_fn(z, t, context, video_gate)

  return recorded


def predictions(z, t, context, gate):
  """The fake model on (z, t) alone, with the given context and video gate for every sample."""
  return fake_model_jax(z, t, context, jnp.full((N,), gate, jnp.float32))


def test_cfg_is_one_call_of_2n_and_equals_the_formula():
  z, t, context, null_context = inputs()
  calls = []
  denoise_fn = diffusion.classifier_free_guidance(recording(fake_model_jax, calls), context=context,
                                                  null_context=null_context, scale=7.5)
  guided = denoise_fn(z, t)
  uncond, cond = predictions(z, t, null_context, 1.0), predictions(z, t, context, 1.0)
  np.testing.assert_allclose(guided, uncond + 7.5 * (cond - uncond), atol=1e-5)
  assert len(calls) == 1 and calls[0][0] == 2 * N
  np.testing.assert_array_equal(calls[0][1], np.ones(2 * N))


def test_temporal_guidance_is_one_call_of_3n_and_equals_eq8():
  z, t, context, null_context = inputs(1)
  calls = []
  denoise_fn = diffusion.temporal_guidance(recording(fake_model_jax, calls), context=context,
                                           null_context=null_context, scale=7.5, temporal_guidance_scale=1.7)
  guided = denoise_fn(z, t)
  image_uncond = predictions(z, t, null_context, 0.0)
  video_uncond = predictions(z, t, null_context, 1.0)
  video_cond = predictions(z, t, context, 1.0)
  expected = image_uncond + 1.7 * (video_uncond - image_uncond) + 7.5 * (video_cond - video_uncond)
  np.testing.assert_allclose(guided, expected, atol=1e-5)
  assert np.abs(np.asarray(guided) - (video_uncond + 7.5 * (video_cond - video_uncond))).max() > 1e-2
  assert len(calls) == 1 and calls[0][0] == 3 * N
  np.testing.assert_array_equal(calls[0][1], np.repeat([0.0, 1.0, 1.0], N))


def test_temporal_scale_one_equals_video_cfg():
  z, t, context, null_context = inputs(2)
  cfg = diffusion.classifier_free_guidance(fake_model_jax, context=context, null_context=null_context, scale=7.5)

  @jax.jit  # a traced temporal_guidance_scale takes the 3N path
  def temporal(temporal_guidance_scale):
    return diffusion.temporal_guidance(fake_model_jax, context=context, null_context=null_context, scale=7.5,
                                       temporal_guidance_scale=temporal_guidance_scale)(z, t)

  np.testing.assert_allclose(temporal(1.0), cfg(z, t), atol=1e-5)
  calls = []
  shortcut = diffusion.temporal_guidance(recording(fake_model_jax, calls), context=context,
                                         null_context=null_context, scale=7.5, temporal_guidance_scale=1)
  np.testing.assert_array_equal(shortcut(z, t), cfg(z, t))
  assert calls[0][0] == 2 * N


def test_sampler_traces_one_3n_model_call_per_step():
  z, _, context, null_context = inputs(3)
  calls = []
  denoise_fn = diffusion.temporal_guidance(recording(fake_model_jax, calls), context=context,
                                           null_context=null_context[:1], scale=7.5, temporal_guidance_scale=0.5)
  jax.eval_shape(lambda z: diffusion.ddim_sample(denoise_fn, z, diffusion.make_schedule(), num_inference_steps=50,
                                                 prediction_type="v_prediction"), z)
  assert [size for size, _ in calls] == [3 * N]


@pytest.mark.parametrize(
    "kwargs, argument",
    [({"scale": -1.0}, "scale"), ({"temporal_guidance_scale": -0.5}, "temporal_guidance_scale"),
     ({"null_context": np.zeros((N, 4, 8), np.float32)}, "null_context")],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
  _, _, context, null_context = inputs()
  full = {"context": context, "null_context": null_context, "scale": 7.5, "temporal_guidance_scale": 1.5, **kwargs}
  with pytest.raises(InputError, match=argument):
    diffusion.temporal_guidance(fake_model_jax, **full)
