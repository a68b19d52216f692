"""The CLIP stage: contrastive training of a tiny toy CLIP, resumed exactly after a crash, and its
held-out retrieval figure."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import crashing
import tiny_config
from vidjax import toyworld, tree
from vidjax.data.loader import Loader
from vidjax.train import clip_stage, main
from vidjax.train.checkpoint import load_params

STEPS, CRASH_AT = 12, 4


def _config(loop_base) -> ml_collections.ConfigDict:
  config = tiny_config.tiny_config(**{k: v for k, v in loop_base.items() if k.startswith("data.")})
  config.model.content = "image"
  config.model.image_encoder.update(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                                    image_size=16, patch_size=8, projection_dim=12)
  text = dict(config.model.text_encoder.to_dict(), projection_dim=12)
  config.clip_stage = ml_collections.ConfigDict(dict(num_steps=STEPS, lr=3e-3, warmup_steps=1, weight_decay=0.0,
                                                     batch_size=8, retrieval_scenes=5, text_encoder=text))
  config.checkpoint.every_steps = CRASH_AT
  return config


def _batch_loss(config, params) -> float:
  loader = Loader(main.with_values(config, {"data.shuffle": False}).data)
  batch = next(loader)
  loader.close()
  loss, _ = clip_stage.Towers(config).loss(params, jnp.asarray(batch["tokens"]), jnp.asarray(batch["frames"]),
                                           jax.random.key(0))
  return float(loss)


@pytest.fixture(scope="module")
def runs(loop_base, tmp_path_factory):
  """One run straight through, and one that crashes after its step-4 checkpoint and is relaunched."""
  config = _config(loop_base)
  straight = str(tmp_path_factory.mktemp("straight"))
  clip_stage.train_clip(config, straight)
  crashed = str(tmp_path_factory.mktemp("crashed"))
  crashing.crash_after_batches(CRASH_AT, lambda: clip_stage.train_clip(config, crashed))
  at_crash = load_params(f"{crashed}/clip_stage/checkpoints")
  directory = clip_stage.train_clip(config, crashed)
  return {"config": config, "straight": load_params(f"{straight}/clip_stage/checkpoints"),
          "at_crash": at_crash, "resumed": load_params(directory), "workdir": crashed}


def test_a_relaunched_stage_resumes_from_its_checkpoint_and_ends_bit_equal(runs):
  assert sorted(runs["resumed"]) == ["image_encoder", "logit_scale", "text_encoder"]
  straight, resumed = tree.flatten(runs["straight"]), tree.flatten(runs["resumed"])
  assert straight.keys() == resumed.keys()
  for path, value in straight.items():
    np.testing.assert_array_equal(resumed[path], value, err_msg="/".join(path))
  assert not np.array_equal(runs["at_crash"]["image_encoder"]["visual_projection"]["kernel"],
                            runs["resumed"]["image_encoder"]["visual_projection"]["kernel"])


def test_the_contrastive_loss_falls(runs):
  config = runs["config"]
  early, late = _batch_loss(config, runs["at_crash"]), _batch_loss(config, runs["resumed"])
  assert late < early - 0.1, (early, late)
  assert late < np.log(config.clip_stage.batch_size)  # below chance: captions and frames are matched


def test_run_stage_writes_the_held_out_retrieval_figure(runs, capsys):
  clip_stage.run_stage(runs["config"], runs["workdir"])  # trained already: scores only
  with open(f"{runs['workdir']}/clip_stage/retrieval.json") as f:
    report = json.load(f)
  assert report["num_scenes"] == 5 and report["chance"] == 0.2 and report["first_seed"] == 500_000
  assert 0.0 <= report["caption_to_frame_top1"] <= 1.0 and 0.0 <= report["frame_to_caption_top1"] <= 1.0
  assert "held-out retrieval over 5 toy scenes" in capsys.readouterr().out


def test_swap_negatives_replace_one_colour_and_rotate_the_colours_among_the_objects():
  colours = jnp.arange(11, 21)  # the colour words' ids
  tokens = jnp.array([[1, 4, 11, 22, 6, 4, 13, 21, 2, 0],   # two objects, red and blue
                      [1, 4, 12, 22, 2, 0, 0, 0, 0, 0],     # one object
                      [1, 4, 12, 22, 6, 4, 12, 21, 2, 0],   # two objects of one colour
                      [1, 4, 7, 22, 2, 0, 0, 0, 0, 0]])     # no colour word
  for seed in range(5):
    negatives, valid = clip_stage.swap_negatives(tokens, colours, jax.random.key(seed))
    negatives, valid = np.asarray(negatives), np.asarray(valid)
    is_colour = np.isin(np.asarray(tokens), np.asarray(colours))
    replaced, rotated = negatives[:, 0], negatives[:, 1]
    # Negative 0: exactly one colour word changed, to another colour word; nothing else moves.
    changed = replaced != np.asarray(tokens)
    assert list(changed.sum(1)) == [1, 1, 1, 0] and np.all(is_colour[changed])
    assert np.all(np.isin(replaced[changed], np.asarray(colours)))
    # Negative 1: the colours trade places (red cube, blue sphere -> blue cube, red sphere).
    np.testing.assert_array_equal(rotated[0], [1, 4, 13, 22, 6, 4, 11, 21, 2, 0])
    np.testing.assert_array_equal(rotated[1:], np.asarray(tokens)[1:])
    # A negative counts only where it differs from its caption.
    np.testing.assert_array_equal(valid, [[True, True], [True, False], [True, False], [False, False]])


def test_colour_and_shape_negatives_enter_the_image_to_caption_loss(runs):
  """The same batch, params and key: the negatives add captions to tell each frame's apart from."""
  config = runs["config"]
  loader = Loader(main.with_values(config, {"data.shuffle": False}).data)
  batch = next(loader)
  loader.close()
  tokens, frames = jnp.asarray(batch["tokens"]), jnp.asarray(batch["frames"])
  ids = clip_stage.word_token_ids(config, toyworld.COLOURS, "clip_stage.colour_negatives")
  shapes = clip_stage.word_token_ids(config, toyworld.SHAPES, "clip_stage.shape_negatives")
  assert len(ids) == 10 and np.isin(np.asarray(tokens), ids).any()
  assert len(shapes) == 4 and np.isin(np.asarray(tokens), shapes).any() and not set(ids) & set(shapes)
  loss = lambda *words: float(clip_stage.Towers(config, words).loss(runs["straight"], tokens, frames,
                                                                  jax.random.key(0))[0])
  plain, colours, both = loss(), loss(ids), loss(ids, shapes)
  assert colours > plain + 1e-3 and both > colours + 1e-3  # each class's negatives add captions to beat
  assert loss(ids, ()) == colours  # an empty class adds nothing
