"""The prior's DDIM loop: it lands on what an x0 model predicts, guidance 0 ignores the text, one compile."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidjax.models.prior import DiffusionPrior, PriorConfig, embedding_space, example_inputs
from vidjax.parallel.sharding import unbox
from vidjax.sampling.prior import PriorSampler, PriorSamplingConfig

CONFIG = PriorConfig(embed_dim=7, text_width=11, max_text_tokens=5, width=12, depth=1, heads=3, ff_mult=2)
B = 3


def _text(seed: int):
  keys = jax.random.split(jax.random.key(seed), 2)
  hidden = jax.random.normal(keys[0], (B, CONFIG.max_text_tokens, CONFIG.text_width))
  return hidden, embedding_space(jax.random.normal(keys[1], (B, CONFIG.embed_dim))), jnp.ones(hidden.shape[:2], bool)


@pytest.fixture(scope="module")
def setup():
  prior = DiffusionPrior(CONFIG)
  params = unbox(prior.init(jax.random.key(1), **example_inputs(CONFIG, B))["params"])
  return PriorSampler(prior, PriorSamplingConfig(num_inference_steps=8)), params


def test_a_prior_that_always_predicts_one_embedding_samples_its_direction(setup):
  sampler, params = setup
  target = jnp.arange(1.0, 8.0) - 3.0
  out_proj = {"kernel": jnp.zeros_like(params["out_proj"]["kernel"]), "bias": target}
  samples = sampler({**params, "out_proj": out_proj}, *_text(0), jax.random.key(3), guidance_scale=3.0)
  np.testing.assert_allclose(samples, np.broadcast_to(target / np.linalg.norm(target), (B, 7)), atol=1e-4)


def test_samples_are_unit_norm_seeded_and_guidance_zero_ignores_the_text(setup):
  sampler, params = setup
  first = sampler(params, *_text(0), jax.random.key(3), guidance_scale=2.0)
  np.testing.assert_allclose(np.linalg.norm(first, axis=-1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(first, sampler(params, *_text(0), jax.random.key(3), guidance_scale=2.0))
  assert not np.allclose(first, sampler(params, *_text(0), jax.random.key(4), guidance_scale=2.0))
  assert not np.allclose(first, sampler(params, *_text(9), jax.random.key(3), guidance_scale=2.0))
  unconditional = sampler(params, *_text(0), jax.random.key(3), guidance_scale=0.0)
  other_text = sampler(params, *_text(9), jax.random.key(3), guidance_scale=0.0)
  np.testing.assert_allclose(unconditional, other_text, atol=1e-5)
  assert sampler._sample._cache_size() == 1  # a new scale or text is traced, not recompiled
