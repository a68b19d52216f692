"""The toy world: determinism, depth consistent with masks, exact captions, the tokenizer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from transformers import PreTrainedTokenizerFast

from vidjax import toyworld
from vidjax.errors import InputError


def test_same_seed_gives_identical_arrays_and_other_seeds_differ():
  a, b, c = (toyworld.render_clip(s, num_frames=4, height=32, width=40) for s in (7, 7, 8))
  for field in ("rgb", "depth", "disparity", "masks"):
    assert np.array_equal(getattr(a, field), getattr(b, field))
  assert (a.caption, a.objects, a.floor, a.time_of_day, a.seed) == (
      b.caption, b.objects, b.floor, b.time_of_day, 7)
  assert not np.array_equal(a.rgb, c.rgb) and not np.array_equal(a.depth, c.depth)
  assert a.rgb.shape == (4, 32, 40, 3) and a.rgb.dtype == np.uint8
  assert a.depth.shape == a.disparity.shape == (4, 32, 40)
  assert a.depth.dtype == a.disparity.dtype == np.float32
  assert a.masks.shape == (4, len(a.objects), 32, 40) and a.masks.dtype == bool


def test_stride_samples_the_same_motion_and_things_move():
  dense = toyworld.render_clip(11, num_frames=7, height=24, width=24)
  strided = toyworld.render_clip(11, num_frames=4, height=24, width=24, stride=2)
  np.testing.assert_array_equal(strided.rgb, dense.rgb[::2])
  np.testing.assert_array_equal(strided.depth, dense.depth[::2])
  for seed in range(5):
    clip = toyworld.render_clip(seed, num_frames=2, height=32, width=32, stride=4)
    assert not np.array_equal(clip.masks[0], clip.masks[1]), f"seed {seed}: nothing moved"


@pytest.mark.parametrize("seed", range(6))
def test_objects_are_nearer_than_the_floor_or_sky_behind_them(seed):
  scene = toyworld.sample_scene(seed)
  clip = toyworld.render_clip(seed, num_frames=3, height=48, width=48, stride=3, scene=scene)
  empty = toyworld.render_clip(seed, num_frames=3, height=48, width=48, stride=3,
                               scene=dataclasses.replace(scene, objects=()))
  visible = clip.masks.any(axis=1)  # (T, H, W)
  assert np.all(clip.depth[visible] < empty.depth[visible])
  np.testing.assert_array_equal(clip.depth[~visible], empty.depth[~visible])
  assert np.all(clip.masks.sum(axis=1) <= 1)  # a pixel shows at most one object
  assert np.all(np.isfinite(clip.depth)) and clip.depth.max() <= toyworld.FAR


def test_every_object_is_visible_in_the_first_frame():
  for seed in range(40):
    clip = toyworld.render_clip(seed, num_frames=1, height=48, width=48)
    pixels = clip.masks[0].sum(axis=(1, 2))
    assert np.all(pixels >= 5), f"seed {seed}: object pixels {pixels}"


def test_disparity_is_clip_normalised_inverse_depth():
  clip = toyworld.render_clip(3, num_frames=4, height=32, width=32)
  inverse = 1 / clip.depth.astype(np.float64)
  expected = (inverse - inverse.min()) / (inverse.max() - inverse.min())
  np.testing.assert_allclose(clip.disparity, expected, atol=1e-6)
  assert clip.disparity.min() == 0 and clip.disparity.max() == 1
  nearest = np.unravel_index(clip.depth.argmin(), clip.depth.shape)
  assert clip.disparity[nearest] == 1
  sky = clip.depth == toyworld.FAR
  assert sky[:, 0].any() and np.all(clip.disparity[sky] == 0)  # the sky: far, finite, disparity 0


@pytest.mark.parametrize("seed", range(12))
def test_captions_name_exactly_the_objects_present(seed):
  clip = toyworld.render_clip(seed, num_frames=1, height=16, width=16)
  phrases = [f"{o['colour']} {o['shape']}" for o in clip.objects]
  for phrase in phrases:
    assert phrase in clip.caption
  words = clip.caption.replace(",", " ").split()
  for key, names in (("colour", toyworld.COLOURS), ("shape", toyworld.SHAPES)):
    assert sorted(w for w in words if w in names) == sorted(o[key] for o in clip.objects)
  assert f"on a {clip.floor} floor" in clip.caption and clip.time_of_day in words
  assert [w for w in words if w in toyworld.FLOORS] == [clip.floor]
  assert [w for w in words if w in toyworld.TIMES_OF_DAY] == [clip.time_of_day]
  assert clip.masks.shape[1] == len(clip.objects) == len(toyworld.sample_scene(seed).objects)


def test_caption_grammar_examples():
  scene = toyworld.sample_scene(0)
  named = (("cube", "yellow"), ("sphere", "purple"), ("cone", "orange"))
  objects = tuple(dataclasses.replace(scene.objects[0], shape=shape, colour=colour)
                  for shape, colour in named)
  night = dataclasses.replace(scene, floor="checkered", time_of_day="night", objects=objects[:2])
  assert toyworld.caption_for(night) == (
      "a yellow cube and a purple sphere on a checkered floor at night")
  three = dataclasses.replace(night, objects=objects, floor="grid", time_of_day="day")
  assert toyworld.caption_for(three) == (
      "a yellow cube, a purple sphere and an orange cone on a grid floor during the day")


def test_sampling_covers_the_grammar_and_floors_and_skies_look_different():
  scenes = [toyworld.sample_scene(seed) for seed in range(300)]
  assert {s.floor for s in scenes} == set(toyworld.FLOORS)
  assert {s.time_of_day for s in scenes} == set(toyworld.TIMES_OF_DAY)
  assert {o.shape for s in scenes for o in s.objects} == set(toyworld.SHAPES)
  assert {o.colour for s in scenes for o in s.objects} == set(toyworld.COLOURS)
  assert {len(s.objects) for s in scenes} == {1, 2, 3}
  base = scenes[0]
  variants = [dataclasses.replace(base, floor=f, time_of_day=t)
              for f in toyworld.FLOORS for t in toyworld.TIMES_OF_DAY]
  looks = [toyworld.render_clip(0, 1, 24, 24, scene=variant).rgb for variant in variants]
  assert len({look.tobytes() for look in looks}) == len(looks)


def test_recolouring_keeps_silhouettes_and_changes_colours_and_caption():
  scene = toyworld.sample_scene(3)
  unused = [c for c in toyworld.COLOURS if c not in {o.colour for o in scene.objects}]
  colours = unused[:len(scene.objects)]
  new = toyworld.recolour(scene, colours)
  a = toyworld.render_clip(3, num_frames=2, height=32, width=32, scene=scene)
  b = toyworld.render_clip(3, num_frames=2, height=32, width=32, scene=new)
  np.testing.assert_array_equal(a.masks, b.masks)
  np.testing.assert_array_equal(a.depth, b.depth)
  background = ~a.masks.any(axis=1)
  np.testing.assert_array_equal(a.rgb[background], b.rgb[background])
  assert not np.array_equal(a.rgb[~background], b.rgb[~background])
  assert [o["colour"] for o in b.objects] == colours and a.caption != b.caption
  with pytest.raises(InputError, match="colours"):
    toyworld.recolour(scene, ["red"] * (len(scene.objects) + 1))


def test_tokenizer_round_trips_through_transformers(tmp_path):
  folder = toyworld.save_tokenizer(tmp_path / "tok")
  loaded = PreTrainedTokenizerFast.from_pretrained(folder)
  caption = "a yellow cube and a purple sphere on a checkered floor at night"
  vocab = loaded.get_vocab()
  words = ["<|startoftext|>"] + caption.split() + ["<|endoftext|>"]
  expected = [vocab[w] for w in words] + [loaded.pad_token_id] * (16 - len(words))
  assert loaded(caption, padding="max_length", truncation=True)["input_ids"] == expected
  built = toyworld.build_tokenizer()
  assert built(caption, padding="max_length", truncation=True)["input_ids"] == expected
  special = (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.unk_token_id)
  assert special == (0, 1, 2, 3)
  long = loaded("a red cube, a blue cone and a pink sphere on a plain floor during the day",
                padding="max_length", truncation=True)["input_ids"]
  assert len(long) == 16 and long[-1] == loaded.eos_token_id  # truncated, still closed by eos
  assert loaded("a zebra")["input_ids"] == [1, vocab["a"], loaded.unk_token_id, 2]


def test_every_caption_word_is_in_the_vocabulary():
  tokenizer = toyworld.build_tokenizer(max_length=24)
  for seed in range(200):
    caption = toyworld.caption_for(toyworld.sample_scene(seed))
    ids = tokenizer(caption, padding="max_length", truncation=True)["input_ids"]
    assert tokenizer.unk_token_id not in ids, caption
    assert tokenizer.decode(ids, skip_special_tokens=True) == caption.replace(",", " ,")
  assert set(toyworld.VOCAB_WORDS) <= set(tokenizer.get_vocab())


def test_save_tokenizer_replaces_a_folder_atomically(tmp_path):
  folder = tmp_path / "tok"
  folder.mkdir()
  (folder / "stale.json").write_text("{}")
  toyworld.save_tokenizer(folder)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]
  assert "stale.json" not in {p.name for p in folder.iterdir()}
  assert (folder / "tokenizer.json").exists()


def test_render_rejects_bad_sizes_and_unknown_scene_words():
  for bad in ({"num_frames": 0}, {"height": -1}, {"stride": 1.5}):
    with pytest.raises(InputError, match=next(iter(bad))):
      toyworld.render_clip(0, **bad)
  scene = toyworld.sample_scene(0)
  torus = dataclasses.replace(scene.objects[0], shape="torus")
  for bad in (dataclasses.replace(scene, floor="marble"), dataclasses.replace(scene, objects=(torus,))):
    with pytest.raises(InputError, match="unknown value"):
      toyworld.render_clip(0, scene=bad)
