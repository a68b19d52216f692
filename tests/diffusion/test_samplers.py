"""DDIM against diffusers' DDIMScheduler, SDEdit start, masked editing, compile-once."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusion_fakes import (CONTEXT_SHAPE, LATENT_SHAPE, fake_model_jax, fake_model_torch, random_arrays,
                             sd2_ddim_scheduler)

from vidjax import diffusion
from vidjax.errors import InputError

SCHEDULE = diffusion.make_schedule()


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 10, 25, 30, 50, 1000])
def test_timesteps_equal_set_timesteps(spacing, steps):
  reference = sd2_ddim_scheduler(timestep_spacing=spacing)
  reference.set_timesteps(steps)
  np.testing.assert_array_equal(diffusion.ddim_timesteps(1000, steps, spacing), reference.timesteps.numpy())


def test_sdedit_start_equals_img2img_get_timesteps():
  from diffusers import StableDiffusionImg2ImgPipeline  # slow import, only here

  reference = sd2_ddim_scheduler()
  pipeline = types.SimpleNamespace(scheduler=reference)
  for steps in (10, 25, 50, 75, 100):
    reference.set_timesteps(steps)
    for percent in range(1, 101):
      strength = percent / 100
      expected, _ = StableDiffusionImg2ImgPipeline.get_timesteps(pipeline, steps, strength, "cpu")
      start = int(diffusion.sdedit_start_index(steps, strength))
      intended_steps = steps * percent // 100
      if intended_steps == 0:  # diffusers would fail later with zero steps; we run the last one
        assert start == steps - 1
      elif len(expected) != intended_steps:  # float64 artifact in diffusers, e.g. 0.29 * 100
        assert start == steps - intended_steps
      else:
        np.testing.assert_array_equal(diffusion.ddim_timesteps(1000, steps)[start:], expected.numpy(),
                                      err_msg=f"steps={steps} strength={strength}")


def reference_cfg_loop(noise, context, null_context, *, steps, prediction_type, eta, variance_noise=None,
                       init_latents=None, strength=1.0, **scheduler_overrides):
  """The Stable Diffusion img2img / text2img loop driven by diffusers' DDIMScheduler.step, CFG 7.5."""
  scheduler = sd2_ddim_scheduler(prediction_type=prediction_type, **scheduler_overrides)
  scheduler.set_timesteps(steps)
  noise = torch.from_numpy(noise)
  start = steps - int(steps * strength)
  latents = noise
  if init_latents is not None:
    latents = scheduler.add_noise(torch.from_numpy(init_latents), noise, scheduler.timesteps[start:start + 1])
  contexts = torch.from_numpy(np.concatenate([null_context, context]))
  gates = torch.ones(2 * noise.shape[0])
  for i in range(start, steps):
    t = scheduler.timesteps[i]
    uncond, cond = fake_model_torch(torch.cat([latents] * 2), t.repeat(2 * noise.shape[0]), contexts,
                                    gates).chunk(2)
    step_noise = None if variance_noise is None else torch.from_numpy(variance_noise[i])
    latents = scheduler.step(uncond + 7.5 * (cond - uncond), t, latents, eta=eta, variance_noise=step_noise)
    latents = latents.prev_sample
  return latents.numpy()


@pytest.mark.parametrize(
    "prediction_type, eta, steps, options",
    [("epsilon", 0.0, 25, {}), ("epsilon", 0.5, 25, {}), ("v_prediction", 0.0, 50, {}),
     ("v_prediction", 0.5, 25, {}), ("v_prediction", 0.0, 30, {"spacing": "trailing"}),
     ("epsilon", 0.0, 25, {"spacing": "linspace"}), ("v_prediction", 0.5, 10, {"set_alpha_to_one": True}),
     ("epsilon", 0.0, 10, {"clip_sample_range": 0.5})],
)
def test_cfg_ddim_loop_equals_diffusers(prediction_type, eta, steps, options):
  noise, context, null_context, variance_noise = random_arrays(
      0, LATENT_SHAPE, CONTEXT_SHAPE, CONTEXT_SHAPE, (steps,) + LATENT_SHAPE)
  denoise_fn = diffusion.classifier_free_guidance(fake_model_jax, context=context, null_context=null_context,
                                                  scale=7.5)
  latents = diffusion.ddim_sample(denoise_fn, noise, SCHEDULE, num_inference_steps=steps,
                                  prediction_type=prediction_type, eta=eta, variance_noise=variance_noise,
                                  **options)
  overrides = {"timestep_spacing": options.get("spacing", "leading"),
               "set_alpha_to_one": options.get("set_alpha_to_one", False)}
  if "clip_sample_range" in options:
    overrides.update(clip_sample=True, clip_sample_range=options["clip_sample_range"])
  expected = reference_cfg_loop(noise, context, null_context, steps=steps, prediction_type=prediction_type,
                                eta=eta, variance_noise=variance_noise, **overrides)
  np.testing.assert_allclose(latents, expected, rtol=0, atol=1e-5)


def test_sdedit_strength_equals_img2img_flow():
  steps = 25
  noise, init_latents, context, null_context = random_arrays(1, LATENT_SHAPE, LATENT_SHAPE, CONTEXT_SHAPE,
                                                             CONTEXT_SHAPE)
  denoise_fn = diffusion.classifier_free_guidance(fake_model_jax, context=context, null_context=null_context,
                                                  scale=7.5)
  latents = diffusion.ddim_sample(denoise_fn, noise, SCHEDULE, num_inference_steps=steps,
                                  prediction_type="v_prediction", init_latents=init_latents, strength=0.6)
  expected = reference_cfg_loop(noise, context, null_context, steps=steps, prediction_type="v_prediction",
                                eta=0.0, init_latents=init_latents, strength=0.6)
  np.testing.assert_allclose(latents, expected, rtol=0, atol=1e-5)


def reference_masked_loop(noise, source, keep_mask, rng, *, steps, strength):
  """diffusers' inpainting loop for 4-channel UNets (DDIMScheduler.step, then the kept region is the
  source noised to the next timestep), fed the per-step source noise that ddim_sample documents."""
  scheduler = sd2_ddim_scheduler(prediction_type="v_prediction")
  scheduler.set_timesteps(steps)
  start = steps - int(steps * strength)
  timesteps = scheduler.timesteps
  source_t, keep = torch.from_numpy(source), torch.from_numpy(keep_mask)
  latents = scheduler.add_noise(source_t, torch.from_numpy(noise), timesteps[start:start + 1])
  gates, context = torch.ones(noise.shape[0]), torch.zeros(CONTEXT_SHAPE)
  for i in range(start, steps):
    output = fake_model_torch(latents, timesteps[i].repeat(noise.shape[0]), context, gates)
    latents = scheduler.step(output, timesteps[i], latents).prev_sample
    kept = source_t
    if i < steps - 1:
      source_noise = np.array(jax.random.normal(jax.random.fold_in(rng, 2 * i + 1), noise.shape))
      kept = scheduler.add_noise(source_t, torch.from_numpy(source_noise), timesteps[i + 1:i + 2])
    latents = keep * kept + (1 - keep) * latents
  return latents.numpy()


def test_masked_editing_equals_inpainting_loop_and_keeps_the_source_exactly():
  noise, source = random_arrays(2, LATENT_SHAPE, LATENT_SHAPE)
  keep_mask = np.zeros(LATENT_SHAPE[:-1] + (1,), np.float32)
  keep_mask[:, :, 1:4, 2:5] = 1.0  # a box in every frame
  context = jnp.zeros(CONTEXT_SHAPE)
  rng = jax.random.key(0)
  sample = jax.jit(lambda noise, rng: diffusion.ddim_sample(
      lambda z, t: fake_model_jax(z, t, context, jnp.ones(z.shape[0])), noise, SCHEDULE,
      num_inference_steps=10, prediction_type="v_prediction", rng=rng, init_latents=source, strength=0.8,
      keep_mask=keep_mask, source_latents=source))
  latents = np.asarray(sample(noise, rng))
  kept = np.broadcast_to(keep_mask == 1, LATENT_SHAPE)
  np.testing.assert_array_equal(latents[kept], source[kept])
  assert np.all(latents[~kept] != source[~kept])
  expected = reference_masked_loop(noise, source, keep_mask, rng, steps=10, strength=0.8)
  np.testing.assert_allclose(latents, expected, rtol=0, atol=1e-5)


def test_jitted_sampler_compiles_once_for_new_noise_context_and_strength():
  traces = []

  @jax.jit
  def sample(noise, init_latents, context, null_context, strength, eta, rng):
    traces.append(1)
    denoise_fn = diffusion.temporal_guidance(fake_model_jax, context=context, null_context=null_context,
                                             scale=7.5, temporal_guidance_scale=1.2)
    return diffusion.ddim_sample(denoise_fn, noise, SCHEDULE, num_inference_steps=10,
                                 prediction_type="v_prediction", eta=eta, rng=rng, init_latents=init_latents,
                                 strength=strength)

  first = sample(*random_arrays(3, LATENT_SHAPE, LATENT_SHAPE, CONTEXT_SHAPE, CONTEXT_SHAPE), 0.6, 0.0,
                 jax.random.key(0))
  second = sample(*random_arrays(4, LATENT_SHAPE, LATENT_SHAPE, CONTEXT_SHAPE, CONTEXT_SHAPE), 0.9, 0.5,
                  jax.random.key(1))
  assert len(traces) == 1
  assert np.all(np.isfinite(first)) and np.all(np.isfinite(second))


def test_eta_noise_from_rng_is_the_documented_per_step_stream():
  noise, context = random_arrays(5, LATENT_SHAPE, CONTEXT_SHAPE)
  denoise_fn = diffusion.classifier_free_guidance(fake_model_jax, context=context, null_context=context,
                                                  scale=1.0)

  @jax.jit
  def sample(rng, variance_noise):
    return diffusion.ddim_sample(denoise_fn, noise, SCHEDULE, num_inference_steps=5, prediction_type="epsilon",
                                 eta=1.0, rng=rng, variance_noise=variance_noise)

  rng = jax.random.key(0)
  stream = jnp.stack([jax.random.normal(jax.random.fold_in(rng, 2 * i), LATENT_SHAPE) for i in range(5)])
  np.testing.assert_allclose(sample(rng, None), sample(None, stream), atol=1e-6)
  assert np.abs(np.asarray(sample(rng, None)) - np.asarray(sample(jax.random.key(1), None))).max() > 1e-2


@pytest.mark.parametrize(
    "overrides, argument",
    [({"eta": 0.5}, "rng"), ({"strength": 0.5}, "init_latents"), ({"eta": -1.0}, "eta"),
     ({"keep_mask": np.ones(LATENT_SHAPE[:-1] + (1,), np.float32)}, "keep_mask"),
     ({"prediction_type": "x0"}, "prediction_type"), ({"num_inference_steps": 1001}, "num_inference_steps"),
     ({"spacing": "uniform"}, "spacing"), ({"eta": 0.5, "variance_noise": np.zeros((4,) + LATENT_SHAPE)},
                                           "variance_noise")],
)
def test_bad_arguments_name_the_argument(overrides, argument):
  (noise,) = random_arrays(6, LATENT_SHAPE)
  kwargs = {"num_inference_steps": 5, "prediction_type": "epsilon", **overrides}
  with pytest.raises(InputError, match=argument):
    diffusion.ddim_sample(lambda z, t: z, noise, SCHEDULE, **kwargs)
