"""The toy world: determinism, depth consistent with masks, exact captions, the tokenizer, speed-free."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from transformers import PreTrainedTokenizerFast

from vidjax import toyworld
from vidjax.data import video_io
from vidjax.errors import InputError


def test_same_seed_gives_identical_arrays_and_other_seeds_differ():
  a, b, c = (toyworld.render_clip(s, num_frames=4, height=32, width=40) for s in (7, 7, 8))
  for field in ("rgb", "depth", "disparity", "masks"):
    assert np.array_equal(getattr(a, field), getattr(b, field))
  assert a.caption == b.caption
  assert not np.array_equal(a.rgb, c.rgb)
  assert a.rgb.shape == (4, 32, 40, 3) and a.rgb.dtype == np.uint8
  assert a.depth.shape == a.disparity.shape == (4, 32, 40) and a.masks.shape[:2] == (4, len(a.objects))


@pytest.mark.parametrize("seed", range(6))
def test_objects_are_nearer_than_the_floor_behind_them(seed):
  scene = toyworld.sample_scene(seed)
  clip = toyworld.render_clip(seed, num_frames=3, height=48, width=48, scene=scene)
  empty = toyworld.render_clip(seed, num_frames=3, height=48, width=48, scene=dataclasses.replace(scene, objects=()))
  visible = clip.masks.any(axis=1)  # (T, H, W)
  assert visible.any(), "every object hidden in every frame"
  assert np.all(clip.depth[visible] < empty.depth[visible])
  assert np.array_equal(clip.depth[~visible], empty.depth[~visible])
  assert 0.0 <= clip.disparity.min() and clip.disparity.max() <= 1.0


@pytest.mark.parametrize("seed", range(10))
def test_captions_name_exactly_the_objects_present(seed):
  clip = toyworld.render_clip(seed, num_frames=2, height=16, width=16)
  words = clip.caption.replace(",", " ").split()
  for obj in clip.objects:
    assert obj["colour"] in words and obj["shape"] in words
  named_colours = [w for w in words if w in toyworld.COLOURS]
  assert sorted(named_colours) == sorted(o["colour"] for o in clip.objects)
  assert clip.floor in words and clip.caption == toyworld.caption_for(toyworld.sample_scene(seed))


def test_recolouring_keeps_silhouettes_and_changes_the_caption():
  scene = toyworld.sample_scene(3)
  colours = [c for c in toyworld.COLOURS if c not in {o.colour for o in scene.objects}][:len(scene.objects)]
  new = toyworld.recolour(scene, colours)
  a = toyworld.render_clip(3, num_frames=2, height=32, width=32, scene=scene)
  b = toyworld.render_clip(3, num_frames=2, height=32, width=32, scene=new)
  assert np.array_equal(a.masks, b.masks) and not np.array_equal(a.rgb, b.rgb)
  assert all(c in b.caption for c in colours) and a.caption != b.caption


def test_tokenizer_round_trips_through_transformers_and_covers_the_grammar(tmp_path):
  toyworld.save_tokenizer(tmp_path / "tok")
  tokenizer = PreTrainedTokenizerFast.from_pretrained(tmp_path / "tok")
  built = toyworld.build_tokenizer()
  for seed in range(40):
    caption = toyworld.render_clip(seed, num_frames=1, height=8, width=8).caption
    ids = tokenizer(caption, padding="max_length", max_length=16, truncation=True)["input_ids"]
    assert ids == built(caption, padding="max_length", max_length=16, truncation=True)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id in ids


def test_clip_survives_an_mp4_and_a_gif_round_trip(tmp_path):
  clip = toyworld.render_clip(5, num_frames=6, height=48, width=64)
  for name, tolerance in (("clip.mp4", 8.0), ("clip.gif", 12.0)):
    video_io.write_video(tmp_path / name, clip.rgb, fps=8)
    back = video_io.read_video(tmp_path / name)
    assert back.shape == clip.rgb.shape
    assert np.abs(back.astype(np.float32) - clip.rgb).mean() < tolerance, name


def test_render_rejects_bad_sizes():
  with pytest.raises(InputError, match="num_frames"):
    toyworld.render_clip(0, num_frames=0)
