"""The toy recolouring benchmark: held-out cases, and metrics that rank the ideal, the unedited and
a blank output as they should."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from vidjax import toyworld
from vidjax.errors import InputError
from vidjax.eval import toy_edit
from vidjax.pipelines import toy_edit_cli


@pytest.fixture(scope="module")
def cases():
  return toy_edit.edit_cases(6)


def test_target_render_scores_as_the_ideal_edit(cases):
  report = toy_edit.evaluate(lambda case: case.target.rgb, cases)
  assert report["mean_iou"] >= 0.9 and min(r["iou"] for r in report["rows"]) >= 0.9
  assert report["colour_accuracy"] == 1.0
  assert report["mean_consistency"] == pytest.approx(1.0)
  assert report["num_cases"] == 6 and report["num_objects"] == sum(len(c.new_colours) for c in cases)
  assert report["num_colours_correct"] == report["num_objects"]


def test_unedited_source_gets_the_colours_wrong(cases):
  report = toy_edit.evaluate(lambda case: case.source.rgb, cases)
  assert report["colour_accuracy"] <= 0.2
  # Its objects keep their old colours, which are not the target's exemplars.
  assert report["mean_iou"] < 0.5


def test_flat_grey_video_scores_low(cases):
  report = toy_edit.evaluate(lambda case: np.full_like(case.target.rgb, 128), cases)
  assert report["mean_iou"] <= 0.1
  assert report["colour_accuracy"] < 0.5
  assert report["mean_consistency"] == 0.0  # a frozen video does not flicker, it does not move


def test_noise_lowers_the_scores_gradually(cases):
  rng = np.random.default_rng(0)

  def noisy(case, sigma):
    return np.clip(case.target.rgb + rng.normal(0, sigma, case.target.rgb.shape), 0, 255).astype(np.uint8)

  light, heavy = (toy_edit.evaluate(lambda c: noisy(c, s), cases) for s in (5, 20))
  assert 0.8 < light["mean_iou"] < 1.0 and heavy["mean_iou"] < light["mean_iou"]
  assert light["mean_consistency"] > 2.0  # independent per-frame noise is flicker


def test_edit_cases_are_deterministic_held_out_and_visible(cases):
  again = toy_edit.edit_cases(6)
  for a, b in zip(cases, again):
    assert (a.seed, a.new_colours, a.target_caption) == (b.seed, b.new_colours, b.target_caption)
    for field in ("rgb", "disparity", "masks"):
      np.testing.assert_array_equal(getattr(a.source, field), getattr(b.source, field))
    np.testing.assert_array_equal(a.target.rgb, b.target.rgb)
    np.testing.assert_array_equal(a.palette_means, b.palette_means)
  seeds = [c.seed for c in cases]
  assert not set(seeds) & set(toy_edit.TRAINING_SEEDS) and seeds == sorted(set(seeds))
  for case in cases:
    t, k = case.source.masks.shape[:2]
    assert case.source.rgb.shape == (8, 64, 64, 3) and case.source.disparity.shape == (8, 64, 64)
    assert case.source.masks.sum(axis=(2, 3)).min() >= toy_edit.MIN_OBJECT_PIXELS
    np.testing.assert_array_equal(case.target.masks, case.source.masks)  # same silhouettes
    np.testing.assert_array_equal(case.target.disparity, case.source.disparity)
    assert case.palette_means.shape == (k, len(toy_edit.PALETTE), 3)
  with pytest.raises(InputError, match="first_seed"):
    toy_edit.edit_cases(2, first_seed=2000)
  with pytest.raises(InputError, match="num_clips"):
    toy_edit.edit_cases(0)


def test_barely_visible_scenes_are_skipped():
  # Seed 1_000_062 has an object with 2 pixels in one frame.
  assert toy_edit._make_case(1_000_062, 8, 64, 2) is None
  seeds = [c.seed for c in toy_edit.edit_cases(3, first_seed=1_000_061)]
  assert seeds == [1_000_061, 1_000_063, 1_000_064]


def test_new_colours_differ_from_the_source_and_each_other(cases):
  rng = np.random.default_rng(0)
  for seed in range(1_000_000, 1_000_200):
    scene = toyworld.sample_scene(seed)
    old = [o.colour for o in scene.objects]
    for confusable in (None, rng.uniform(0, 0.2, (len(old), len(toy_edit.PALETTE)))):
      new = toy_edit.new_colours_for(scene, confusable)
      assert len(new) == len(old) and len(set(new)) == len(new)
      assert all(n != o for n, o in zip(new, old)), (seed, old, new)
  for case in cases:
    scene = toyworld.sample_scene(case.seed)
    assert case.target_caption == toyworld.caption_for(toyworld.recolour(scene, case.new_colours))
    assert [o["colour"] for o in case.target.objects] == list(case.new_colours)
    assert all(n != o["colour"] for n, o in zip(case.new_colours, case.source.objects))


def test_palette_means_equal_renders_of_one_object_recoloured(cases):
  # edit_cases paints all objects one colour at once; that must equal recolouring one at a time.
  case = next(c for c in cases if len(c.new_colours) >= 2)
  scene = toyworld.sample_scene(case.seed)
  regions = toy_edit._colour_regions(case.source.masks)
  for k in range(len(scene.objects)):
    for j in (0, 7):
      colours = [o.colour for o in scene.objects]
      colours[k] = toy_edit.PALETTE[j]
      clip = toyworld.render_clip(case.seed, 8, 64, 64, 2, scene=toyworld.recolour(scene, colours))
      np.testing.assert_array_equal(toy_edit._region_means(clip.rgb, regions)[k], case.palette_means[k, j])


def test_colour_accuracy_names_each_palette_colour_on_its_object(cases):
  case = cases[0]
  scene = toyworld.sample_scene(case.seed)
  for name in toy_edit.PALETTE:
    clip = toyworld.render_clip(case.seed, 8, 64, 64, 2,
                                scene=toyworld.recolour(scene, [name] * len(scene.objects)))
    assert toy_edit.predicted_colours(clip.rgb, case) == (name,) * len(scene.objects)


def test_wrong_outputs_are_named(cases):
  case = cases[0]
  with pytest.raises(InputError, match="uint8"):
    toy_edit.evaluate(lambda c: c.target.rgb.astype(np.float32), [case])
  with pytest.raises(InputError, match="shape"):
    toy_edit.silhouette_iou(case.target.rgb[:4], case)
  with pytest.raises(InputError, match="cases"):
    toy_edit.evaluate(lambda c: c.target.rgb, [])


def test_main_runs_the_pipeline_and_writes_the_report(monkeypatch, tmp_path, capsys):
  cases = toy_edit.edit_cases(2) + toy_edit.edit_cases(1, first_seed=500_000)
  targets = {c.target_caption: c.target.rgb for c in cases}
  calls = []

  class FakePipeline:
    """Stands in for VideoEditPipeline: returns the ideal edit of the prompt."""

    model_dir = types.SimpleNamespace(sampling_defaults={"guidance_scale": 2.0})
    model = types.SimpleNamespace(config=types.SimpleNamespace(content="text"))

    @classmethod
    def from_pretrained(cls, path, progress=True):
      calls.append(("from_pretrained", path, progress))
      return cls()

    def __call__(self, *, depth, prompt, seed, num_inference_steps, guidance_scale, temporal_guidance_scale):
      calls.append((depth.shape, seed, num_inference_steps, guidance_scale, temporal_guidance_scale))
      return types.SimpleNamespace(frames=targets[prompt])

  monkeypatch.setitem(sys.modules, "vidjax.pipelines.edit", types.SimpleNamespace(VideoEditPipeline=FakePipeline))
  out = tmp_path / "report.json"
  status = toy_edit_cli.main(["--checkpoint", "ckpt", "--num_clips", "2", "--steps", "3", "--guidance_scale", "4",
                          "--out", str(out)])
  assert status == 0
  assert calls[0] == ("from_pretrained", "ckpt", False)
  assert calls[1] == ((8, 64, 64), 1_000_000, 3, 4.0, 1.0)
  report = json.loads(out.read_text())
  assert report["mean_iou"] == 1.0 and report["colour_accuracy"] == 1.0 and len(report["rows"]) == 2
  assert report["settings"]["num_inference_steps"] == 3 and report["settings"]["seeds"][0] == 1_000_000
  printed = capsys.readouterr().out
  assert "1000000" in printed and "mean IoU 1.000" in printed and "colour accuracy 1.000 (" in printed
  assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary left behind

  # Without --guidance_scale, the checkpoint's sampling default; --first_seed picks another held-out range.
  calls.clear()
  assert toy_edit_cli.main(["--num_clips", "1", "--first_seed", "500000", "--out", str(out)]) == 0
  assert calls[1][1:4] == (cases[2].seed, 25, 2.0)
  assert json.loads(out.read_text())["settings"]["guidance_scale"] == 2.0
  assert "guidance scale 2 (the checkpoint's sampling default)" in capsys.readouterr().out


def test_a_reference_image_shows_the_new_colours_from_outside_the_clip(cases):
  for case in cases:
    reference = toy_edit.reference_image(case)
    assert reference.dtype == np.uint8 and reference.shape == case.source.rgb.shape[1:]
    np.testing.assert_array_equal(toy_edit.reference_image(case), reference)
    assert not any(np.array_equal(reference, frame) for frame in case.target.rgb)  # not a frame of the clip
    # It is the recoloured scene at one of the later steps, with every object in view.
    scene = toyworld.recolour(toyworld.sample_scene(case.seed), case.new_colours)
    views = {step: toyworld.render_scene(scene, np.array([step]), 64, 64) for step in toy_edit.REFERENCE_STEPS}
    step = next(s for s, view in views.items() if np.array_equal(view.rgb[0], reference))
    assert step > (case.source.rgb.shape[0] - 1) * 2
    surface = views[step].surface[0]
    for k, colour in enumerate(case.new_colours):
      on_object = surface == k + 1
      assert on_object.sum() >= toy_edit.MIN_OBJECT_PIXELS
      mean = reference[on_object].mean(axis=0) / 255.0
      nearest = np.linalg.norm(case.palette_means[k] - mean, axis=1).argmin()
      assert toy_edit.PALETTE[nearest] == colour


def test_main_gives_an_image_model_each_scenes_reference_image(monkeypatch, tmp_path):
  cases = toy_edit.edit_cases(2)
  references = [(toy_edit.reference_image(c), c.target.rgb) for c in cases]

  class FakeImagePipeline:
    """An image-embedding checkpoint: returns the ideal edit of the scene whose reference it is given."""

    model_dir = types.SimpleNamespace(sampling_defaults={"guidance_scale": 2.0}, prior=None, path="fake")
    model = types.SimpleNamespace(config=types.SimpleNamespace(content="image"))

    @classmethod
    def from_pretrained(cls, path, progress=True):
      return cls()

    def __call__(self, *, depth, image, seed, num_inference_steps, guidance_scale, temporal_guidance_scale):
      (target,) = [t for reference, t in references if np.array_equal(reference, image)]
      return types.SimpleNamespace(frames=target)

  monkeypatch.setitem(sys.modules, "vidjax.pipelines.edit", types.SimpleNamespace(VideoEditPipeline=FakeImagePipeline))
  out = tmp_path / "report.json"
  assert toy_edit_cli.main(["--num_clips", "2", "--out", str(out)]) == 0
  report = json.loads(out.read_text())
  assert report["colour_accuracy"] == 1.0 and report["settings"]["content"] == "reference image"


def test_main_prompts_an_image_model_with_a_prior_through_it_by_default(monkeypatch, tmp_path):
  cases = toy_edit.edit_cases(2)
  targets = {c.target_caption: c.target.rgb for c in cases}
  calls = []

  class FakePriorPipeline:
    """An image-embedding checkpoint with a prior: returns the ideal edit of the caption it is given."""

    model_dir = types.SimpleNamespace(sampling_defaults={"guidance_scale": 2.0, "prior_guidance_scale": 1.0,
                                                         "prior_num_inference_steps": 64}, prior=object(), path="fake")
    model = types.SimpleNamespace(config=types.SimpleNamespace(content="image"))

    @classmethod
    def from_pretrained(cls, path, progress=True):
      return cls()

    def __call__(self, *, depth, prompt, seed, prior_guidance_scale, prior_num_inference_steps, **sampling):
      calls.append((prior_guidance_scale, prior_num_inference_steps))
      return types.SimpleNamespace(frames=targets[prompt])

  monkeypatch.setitem(sys.modules, "vidjax.pipelines.edit", types.SimpleNamespace(VideoEditPipeline=FakePriorPipeline))
  out = tmp_path / "report.json"
  assert toy_edit_cli.main(["--num_clips", "2", "--prior_num_inference_steps", "7", "--out", str(out)]) == 0
  report = json.loads(out.read_text())
  assert report["colour_accuracy"] == 1.0 and report["settings"]["content"] == "prior from caption"
  assert calls == [(1.0, 7)] * 2  # the flag over the checkpoint's default; the default where no flag is given
  assert (report["settings"]["prior_guidance_scale"], report["settings"]["prior_num_inference_steps"]) == (1.0, 7)
