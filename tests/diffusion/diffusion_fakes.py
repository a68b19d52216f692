"""A deterministic fake video model written twice, in JAX and in torch, and the SD-2 DDIM oracle.

The fake mixes pixels (a roll along h), frames (through the video gate), the timestep and the
context, so that a sampler that mixes up any of them would give different numbers than diffusers.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch
from diffusers import DDIMScheduler

# Tiny prime-ish shapes (N, T, h, w, C) catch axis mix-ups; contexts are (N, L, D).
LATENT_SHAPE = (2, 3, 5, 7, 4)
CONTEXT_SHAPE = (2, 3, 8)


def fake_model_jax(z, t, context, video_gate):
  """out = 0.75 z + 0.2 roll_h(z) + 0.1 sin(t / 100) + 0.05 mean(context) + 0.25 gate (mean_T z - z)."""
  def per_sample(x):
    return x.reshape((-1, 1, 1, 1, 1))

  temporal = jnp.mean(z, axis=1, keepdims=True) - z
  return (0.75 * z + 0.2 * jnp.roll(z, 1, axis=2) + 0.1 * per_sample(jnp.sin(t.astype(jnp.float32) / 100))
          + 0.05 * per_sample(jnp.mean(context, axis=(1, 2))) + 0.25 * per_sample(video_gate) * temporal)


def fake_model_torch(z, t, context, video_gate):
  """The same function as fake_model_jax, in torch."""
  def per_sample(x):
    return x.reshape((-1, 1, 1, 1, 1))

  temporal = z.mean(dim=1, keepdim=True) - z
  return (0.75 * z + 0.2 * torch.roll(z, 1, dims=2) + 0.1 * per_sample(torch.sin(t.float() / 100))
          + 0.05 * per_sample(context.mean(dim=(1, 2))) + 0.25 * per_sample(video_gate) * temporal)


def sd2_ddim_scheduler(**overrides) -> DDIMScheduler:
  """diffusers' DDIMScheduler with the Stable Diffusion 2 config."""
  config = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                set_alpha_to_one=False, steps_offset=1)
  return DDIMScheduler(**{**config, **overrides})


def random_arrays(seed: int, *shapes):
  """Standard normal float32 numpy arrays of the given shapes."""
  rng = np.random.default_rng(seed)
  return [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
