"""The train step's conditioning (`step.conditioning`): content and structure dropout, CLIP image content.

No UNet runs: the conditioning is the part of the step before the loss, compiled alone (the 'depth'
structure resize and the tiny CLIP tower), so thousands of samples are cheap.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest

import tiny_config
from vidjax import toyworld
from vidjax.convert import pretrained
from vidjax.train import loop
from vidjax.train.step import conditioning

N = 4096  # samples for the dropout fractions: 4 sigma of a fraction p is 4 sqrt(p (1 - p) / N) <= 0.031


def _dropout(content: float, structure: float) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"content_dropout": content, "structure_dropout": structure})


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
  folder = tmp_path_factory.mktemp("tokenizer")
  toyworld.save_tokenizer(folder)
  return loop.build_model(tiny_config.tiny_config(**{"data.tokenizer_dir": str(folder)}))


def _text_batch(model, n=N, seed=0):
  """Latents (the step skips the VAE), depth, and the empty prompt's ids with a word (id >= 5) in front."""
  rng = np.random.default_rng(seed)
  tokens = np.tile(np.asarray(model.config.null_tokens, np.int32), (n, 1))
  tokens[:, 1] = rng.integers(5, model.config.text_encoder.vocab_size, n)
  return {"latents": rng.standard_normal((n, 1, 2, 2, 4)).astype(np.float32),
          "depth": rng.uniform(0, 1, (n, 1, 4, 4, 1)).astype(np.float32),
          "structure_fidelity": np.zeros((n,), np.int32), "tokens": tokens}


def _conditioned(model, dropout, batch, seed=0):
  """(tokens (N, L), structure (N, 1, 2, 2, 1)) after the step's conditioning with these dropout rates."""
  fn = jax.jit(lambda b, key: conditioning(model, dropout, {}, b, key))
  _, structure, content = fn(batch, jax.random.key(seed))
  return np.asarray(content["tokens"]), np.asarray(structure)


def test_dropout_1_drops_every_samples_content_and_structure_and_0_none(text_model):
  batch = _text_batch(text_model)
  full = np.asarray(text_model.encode_structure({}, batch["depth"], batch["structure_fidelity"], (2, 2)))
  assert np.all(np.abs(full).max(axis=(1, 2, 3, 4)) > 0)  # every sample has structure to drop
  tokens, structure = _conditioned(text_model, _dropout(1.0, 1.0), batch)
  np.testing.assert_array_equal(tokens, np.asarray(text_model.null_tokens(N)))  # the empty prompt: CFG's null
  np.testing.assert_array_equal(structure, np.zeros_like(full))
  tokens, structure = _conditioned(text_model, _dropout(0.0, 0.0), batch)
  np.testing.assert_array_equal(tokens, batch["tokens"])
  np.testing.assert_array_equal(structure, full)


def test_content_and_structure_are_each_dropped_in_a_fraction_p_of_samples_independently(text_model):
  batch = _text_batch(text_model)
  full = np.asarray(text_model.encode_structure({}, batch["depth"], batch["structure_fidelity"], (2, 2)))
  p_content, p_structure = 0.25, 0.5
  masks = []
  for seed in (0, 1):
    tokens, structure = _conditioned(text_model, _dropout(p_content, p_structure), batch, seed)
    content_dropped = np.all(tokens == np.asarray(text_model.config.null_tokens), axis=1)
    structure_dropped = np.all(structure == 0, axis=(1, 2, 3, 4))
    # A sample is dropped whole or kept whole: kept ones are untouched.
    np.testing.assert_array_equal(tokens[~content_dropped], batch["tokens"][~content_dropped])
    np.testing.assert_array_equal(structure[~structure_dropped], full[~structure_dropped])
    assert abs(content_dropped.mean() - p_content) < 0.031 and abs(structure_dropped.mean() - p_structure) < 0.031
    # Independent draws: both dropped in p_content * p_structure of the samples (not p_content: one shared draw).
    assert abs((content_dropped & structure_dropped).mean() - p_content * p_structure) < 0.021
    masks.append((content_dropped, structure_dropped))
  assert not np.array_equal(masks[0][0], masks[1][0]) and not np.array_equal(masks[0][1], masks[1][1])


# ---------------------------------------------------------------- CLIP image content (Gen-1)

CLIPS, FRAMES = 64, 3


@pytest.fixture(scope="module")
def image_model():
  config = tiny_config.tiny_config(**{"model.content": "image"})
  config.model.image_encoder.update(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                                    image_size=16, patch_size=8, projection_dim=16)
  model = loop.build_model(config)
  rng = np.random.default_rng(0)
  params = {"image_encoder": jax.tree.map(lambda s: (rng.standard_normal(s.shape) * 0.1).astype(np.float32),
                                          pretrained.param_shapes(model.config.image_encoder))}
  return model, params


def _image_batch(seed=0):
  """Clips whose frames are all one image, so the embedding of 'a random frame' is known; latents given."""
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 256, (CLIPS, 1, 16, 16, 3)).astype(np.float32) / 127.5 - 1.0
  return {"frames": np.repeat(image, FRAMES, axis=1),
          "latents": rng.standard_normal((CLIPS, FRAMES, 8, 8, 4)).astype(np.float32),
          "depth": rng.uniform(0, 1, (CLIPS, FRAMES, 16, 16, 1)).astype(np.float32),
          "structure_fidelity": np.zeros((CLIPS,), np.int32)}


def test_image_content_is_the_clip_embedding_of_the_clips_frames_and_dropped_content_is_the_null_content(image_model):
  model, params = image_model
  batch = _image_batch()
  expected = np.asarray(jax.jit(model.embed_frames)(params, batch["frames"], jax.random.key(7)))  # any frame
  embeds = lambda dropout, b: np.asarray(jax.jit(lambda b, key: conditioning(model, dropout, params, b, key)[2])(
      b, jax.random.key(0))["image_embeds"])
  np.testing.assert_allclose(embeds(_dropout(0.0, 0.0), batch), expected, rtol=1e-6, atol=1e-6)
  half = embeds(_dropout(0.5, 0.0), batch)
  dropped = np.all(half == 0, axis=1)
  assert 0 < dropped.sum() < CLIPS
  np.testing.assert_allclose(half[~dropped], expected[~dropped], rtol=1e-6, atol=1e-6)
  # What a dropped sample's UNet attends to is what classifier-free guidance's unconditional branch gives it.
  context = np.asarray(model.encode_content(params, image_embeds=half))
  np.testing.assert_array_equal(context[dropped], np.asarray(model.null_content(params, CLIPS))[dropped])
  # Cached embeddings in the batch are used instead of the tower's (data.use_latents runs feed them).
  cached = np.random.default_rng(1).standard_normal((CLIPS, 16)).astype(np.float32)
  np.testing.assert_array_equal(embeds(_dropout(0.0, 0.0), {**batch, "image_embeds": cached}), cached)
