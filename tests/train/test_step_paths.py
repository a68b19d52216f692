"""Train-step paths: EMA under gradient accumulation, image content from cached latents."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import tiny_config
from vidjax import toyworld
from vidjax.errors import ConfigError
from vidjax.parallel import unbox
from vidjax.train import loop
from vidjax.train import state as state_lib
from vidjax.train.step import make_train_step
from vidjax.tree import flatten


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  folder = tmp_path_factory.mktemp("tokenizer")
  toyworld.save_tokenizer(folder)
  return str(folder)


def _batch(model, batch=2, frames=2, size=16, seed=0):
  rng = np.random.default_rng(seed)
  tokens = np.tile(np.asarray(model.config.null_tokens, np.int32), (batch, 1))
  tokens[:, 1] = rng.integers(5, model.config.text_encoder.vocab_size, batch)
  return {"frames": rng.uniform(-1, 1, (batch, frames, size, size, 3)).astype(np.float32),
          "depth": rng.uniform(0, 1, (batch, frames, size, size, 1)).astype(np.float32),
          "structure_fidelity": np.zeros((batch,), np.int32), "tokens": tokens}


@pytest.fixture(scope="module")
def accumulating(tokenizer_dir):
  """One compiled step (accumulating 2 micro-steps, skipping non-finite ones) and its fresh state."""
  config = tiny_config.tiny_config(**{"data.tokenizer_dir": tokenizer_dir, "train.object_loss_weight": 0.0,
                                      "train.grad_accum_steps": 2, "train.ema_decay": 0.5,
                                      "train.nonfinite": "skip"})
  model = loop.build_model(config)
  labels = state_lib.trainable_labels(jax.eval_shape(model.init, jax.random.key(0)), config.train.trainable)
  tx = state_lib.make_optimizer(config.train, labels)
  step = jax.jit(make_train_step(model, tx, labels, config.train), static_argnums=2)
  state = jax.device_get(jax.jit(lambda k: unbox(state_lib.create_state(model.init, tx, labels, k)))(jax.random.key(0)))
  return model, step, state


def test_ema_updates_once_per_optimizer_update_under_gradient_accumulation(accumulating):
  model, step, state = accumulating
  path = ("unet", "conv_in", "kernel")
  params, emas = [np.asarray(flatten(state.params)[path])], [np.asarray(flatten(state.ema_params)[path])]
  for i in range(4):  # two optimizer updates of two micro-steps each
    state, _ = step(state, _batch(model, seed=i), False)
    params.append(np.asarray(flatten(state.params)[path]))
    emas.append(np.asarray(flatten(state.ema_params)[path]))
  np.testing.assert_array_equal(params[1], params[0])  # a micro-step does not move the params ...
  assert not np.array_equal(params[2], params[1])  # ... an optimizer update does
  np.testing.assert_array_equal(params[3], params[2])
  decay = 0.5
  expected_after_first = decay * emas[0] + (1 - decay) * params[2]
  np.testing.assert_allclose(emas[2], expected_after_first, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(emas[3], emas[2], rtol=0, atol=0)  # no EMA step on a micro-step
  np.testing.assert_allclose(emas[4], decay * expected_after_first + (1 - decay) * params[4], rtol=1e-6, atol=1e-7)


def _image_content_config(tokenizer_dir):
  config = tiny_config.tiny_config(**{"data.tokenizer_dir": tokenizer_dir, "train.object_loss_weight": 0.0,
                                      "model.content": "image"})
  config.model.image_encoder.update(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                                    image_size=16, patch_size=8, projection_dim=16)
  config.train.trainable = ("unet/.*",)
  return config


def test_image_content_from_cached_latents_needs_cached_embeddings_and_says_so(tokenizer_dir):
  config = _image_content_config(tokenizer_dir)
  model = loop.build_model(config)
  labels = state_lib.trainable_labels(jax.eval_shape(model.init, jax.random.key(0)), config.train.trainable)
  tx = state_lib.make_optimizer(config.train, labels)
  step = make_train_step(model, tx, labels, config.train)
  state = jax.eval_shape(lambda k: unbox(state_lib.create_state(model.init, tx, labels, k)), jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = {"latents": rng.standard_normal((2, 2, 8, 8, 4)).astype(np.float32),
           "depth": rng.uniform(0, 1, (2, 2, 16, 16, 1)).astype(np.float32),
           "structure_fidelity": np.zeros((2,), np.int32)}
  with pytest.raises(ConfigError, match="use_latents.*image_embeds"):  # at the first step's trace, not a KeyError
    jax.eval_shape(lambda s, b: step(s, b, False), state, batch)
  # Cached CLIP embeddings (B, D) in the batch are what such a run trains on: the step traces.
  embedded = {**batch, "image_embeds": rng.standard_normal((2, 16)).astype(np.float32)}
  _, metrics = jax.eval_shape(lambda s, b: step(s, b, False), state, embedded)
  assert metrics["loss"].shape == ()


def test_nonfinite_skip_leaves_params_and_optimizer_state_unchanged_and_counts_the_step(accumulating):
  model, step, state = accumulating
  before = jax.device_get(state)
  bad = _batch(model)
  bad["frames"][0, 0, 0, 0, 0] = np.nan
  state, metrics = step(state, bad, False)
  assert not bool(metrics["finite"]) and int(state.step) == 1  # counted, so the data moves on
  after = jax.device_get(state)
  for old, new in zip(jax.tree_util.tree_leaves((before.params, before.opt_state, before.ema_params)),
                      jax.tree_util.tree_leaves((after.params, after.opt_state, after.ema_params))):
    np.testing.assert_array_equal(old, new)
  for seed in (1, 2):  # good batches then train (an update every second micro-step)
    state, metrics = step(state, _batch(model, seed=seed), False)
  assert bool(metrics["finite"]) and int(state.step) == 3
  assert not np.array_equal(jax.device_get(state.params["unet"]["conv_in"]["kernel"]),
                            before.params["unet"]["conv_in"]["kernel"])
