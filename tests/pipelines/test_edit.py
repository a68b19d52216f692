"""VideoEditPipeline on tiny random checkpoints: inputs accepted and refused, compile reuse, long clips."""

import os
import subprocess
import warnings

import numpy as np
import pytest
from PIL import Image

import tiny_model_dir
from vidjax import toyworld
from vidjax.data import video_io
from vidjax.errors import VidjaxError
from vidjax.pipelines.edit import VideoEditPipeline
from vidjax.sampling import generate

PROMPT = "a red cube on a plain floor at night"
STEPS = 2


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp("models")
  return {"text": tiny_model_dir.write(root / "text"), "image": tiny_model_dir.write(root / "image", content="image")}


@pytest.fixture(scope="module")
def pipe(folders):
  return VideoEditPipeline.from_pretrained(folders["text"], progress=False)


@pytest.fixture(scope="module")
def clip():
  return toyworld.render_clip(5, num_frames=tiny_model_dir.FRAMES, height=32, width=32, stride=1)


def test_a_new_prompt_and_seed_at_the_same_shapes_does_not_recompile(pipe, clip):
  first = pipe(clip.rgb, depth=clip.disparity, prompt=PROMPT, seed=1, num_inference_steps=STEPS)
  traces = pipe.sampler_traces
  second = pipe(clip.rgb, depth=clip.disparity, prompt="a blue sphere on a checkered floor during the day", seed=2,
                num_inference_steps=STEPS, guidance_scale=2.0, structure_fidelity=1, temporal_window=2, eta=0.5)
  assert pipe.sampler_traces == traces >= 1
  assert first.frames.shape == second.frames.shape == (tiny_model_dir.FRAMES, 32, 32, 3)
  assert first.frames.dtype == np.uint8 and not np.array_equal(first.frames, second.frames)
  assert second.settings["seed"] == 2 and second.settings["structure_fidelity"] == 1
  assert second.settings["checkpoint"].endswith("text") and set(second.timings) >= {"depth", "sampling", "decode"}
  # t_s = 1 blurred the depth the model saw.
  assert np.abs(second.depth - first.depth).max() > 0.01


def test_same_seed_gives_the_same_video(pipe, clip):
  a = pipe(clip.rgb, depth=clip.disparity, prompt=PROMPT, seed=3, num_inference_steps=STEPS)
  b = pipe(clip.rgb, depth=clip.disparity, prompt=PROMPT, seed=3, num_inference_steps=STEPS)
  np.testing.assert_array_equal(a.frames, b.frames)


def test_masked_editing_keeps_the_source_latents_where_the_mask_says(pipe, clip):
  keep = np.zeros((32, 32), bool)
  keep[:, :16] = True  # keep the left half
  kept = pipe(clip.rgb, depth=clip.disparity, prompt=PROMPT, seed=4, num_inference_steps=STEPS, mask=keep)
  plain = pipe(clip.rgb, depth=clip.disparity, prompt=PROMPT, seed=4, num_inference_steps=STEPS,
               mask=np.zeros((32, 32), bool))
  everything = pipe(clip.rgb, depth=clip.disparity, prompt=PROMPT, seed=4, num_inference_steps=STEPS,
                    mask=np.ones((32, 32), bool))
  # Keeping everything gives back the VAE round trip of the source; keeping nothing is a free edit.
  latents = generate.encode_frames(pipe.model, pipe.params, clip.rgb[None])
  round_trip = generate.decode_frames(pipe.model, pipe.params, latents)[0].astype(float)
  assert np.abs(everything.frames - round_trip).max() <= 2
  left = lambda frames: frames[:, :, :12].astype(float)  # away from the seam (the decoder mixes neighbours)
  kept_error = np.abs(left(kept.frames) - left(round_trip)).mean()
  assert kept_error < 0.5 * np.abs(left(plain.frames) - left(round_trip)).mean()


def test_more_frames_than_trained_run_through_the_causal_window(pipe):
  depth = np.random.default_rng(0).random((3 * tiny_model_dir.FRAMES, 32, 32)).astype(np.float32)
  result = pipe(depth=depth, prompt=PROMPT, num_inference_steps=STEPS, temporal_window=tiny_model_dir.FRAMES)
  assert result.frames.shape == (3 * tiny_model_dir.FRAMES, 32, 32, 3) and result.source is None


def test_depth_only_input_at_an_odd_size_is_fitted_with_a_warning(pipe):
  depth = np.random.default_rng(1).random((tiny_model_dir.FRAMES, 41, 53))
  with pytest.warns(UserWarning, match="depth changed from 53x41 to 32x24"):
    result = pipe(depth=depth, prompt=PROMPT, num_inference_steps=STEPS)
  assert result.frames.shape[1:3] == result.depth.shape[1:] == (24, 32)


def test_a_strip_that_max_side_shrinks_below_the_size_multiple_names_max_side_and_the_fix(pipe):
  strip = np.zeros((tiny_model_dir.FRAMES, 16, 512, 3), np.uint8)  # 16 px high: enough for the multiple 4
  traces = pipe.sampler_traces
  with pytest.raises(VidjaxError) as error:
    pipe(strip, prompt=PROMPT, num_inference_steps=STEPS)  # max_side defaults to the trained 32: 32x1
  message = str(error.value)
  assert "512x16 is scaled to 32x1 by max_side 32" in message and "at least 4x4" not in message
  assert "--max-side 128" in message and "--height/--width" in message
  assert pipe.sampler_traces == traces
  # The max_side it names fits: the strip becomes 128x4.
  assert video_io.fit_to_multiple(strip, 4, 128)[0].shape == (tiny_model_dir.FRAMES, 4, 128, 3)


def test_prompt_words_the_tokenizer_lacks_are_named_and_refused_under_strict_prompt(pipe, clip, monkeypatch):
  prompt = "a red coffee cup on a wooden kitchen table"  # the toy vocabulary lacks 5 of its 9 words
  negative = " ".join(["red cube"] * 12) + " at night"  # 26 words: past the 24-token context (22 + bos, eos)
  tokenizer_class, checked = type(pipe.model_dir.tokenizer), []
  losses = tokenizer_class.losses
  monkeypatch.setattr(tokenizer_class, "losses",
                      lambda self, captions: checked.append(captions) or losses(self, captions))
  with pytest.warns(UserWarning) as caught:
    result = pipe(clip.rgb, depth=clip.disparity, prompt=prompt, negative_prompt=negative, num_inference_steps=STEPS)
  assert checked == [[prompt, negative]]  # tokenized once, by check_settings; its warnings travel in the settings
  notes = result.settings["warnings"]
  assert [str(w.message) for w in caught] == notes and len(notes) == 2
  assert "'coffee', 'cup', 'wooden', 'kitchen', 'table'" in notes[0]
  assert any(n.startswith(f"prompt {prompt!r}") and "<unk>" in n for n in notes), notes
  assert any(n.startswith("negative_prompt") and "dropped: 'red cube at night'" in n for n in notes), notes
  assert result.settings["strict_prompt"] is False

  traces = pipe.sampler_traces
  with pytest.raises(VidjaxError, match="the tokenizer does not know 'coffee', 'cup'") as error:
    pipe(clip.rgb, depth=clip.disparity, prompt=prompt, num_inference_steps=STEPS, strict_prompt=True)
  assert "Fix: use words the tokenizer knows" in str(error.value) and "cube" in str(error.value)
  with pytest.raises(VidjaxError, match="longer than the 24-token context"):
    pipe(clip.rgb, depth=clip.disparity, prompt=PROMPT, negative_prompt=negative, strict_prompt=True)
  assert pipe.sampler_traces == traces
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # known words within the context: nothing to say
    pipe(clip.rgb, depth=clip.disparity, prompt=PROMPT, num_inference_steps=STEPS, strict_prompt=True)


def test_grayscale_video_without_a_depth_estimator_warns(pipe, tmp_path):
  gray = np.repeat(np.linspace(0, 255, 40 * 36, dtype=np.uint8).reshape(1, 36, 40), 6, axis=0)
  path = tmp_path / "gray.mp4"
  video_io.write_video(path, np.repeat(gray[..., None], 3, axis=-1))
  with pytest.warns(UserWarning) as caught:
    result = pipe(str(path), prompt=PROMPT, num_inference_steps=STEPS)
  messages = " | ".join(str(w.message) for w in caught)
  assert "approximated by brightness" in messages and "changed from 40x36 to 32x28" in messages
  assert result.frames.shape == (tiny_model_dir.FRAMES, 28, 32, 3)


@pytest.mark.parametrize("name", ["box.mp4", "tree.avi"])
def test_the_shared_real_videos_at_their_odd_sizes(pipe, shared_video, name):
  path = shared_video(name)
  info = video_io.probe(path)
  with pytest.warns(UserWarning, match="changed from"):
    result = pipe(str(path), prompt=PROMPT, num_inference_steps=STEPS, stride=2)
  height, width = result.frames.shape[1:3]
  assert max(height, width) <= 32 and height % 4 == 0 and width % 4 == 0
  assert result.source.shape == result.frames.shape and info.width and info.height


def test_a_content_image_model_takes_an_image(folders, clip, tmp_path, monkeypatch):
  pipe = VideoEditPipeline.from_pretrained(folders["image"], progress=False)
  contexts = []
  real_sample = generate.sample_latents
  monkeypatch.setattr(generate, "sample_latents", lambda *a, **k: contexts.append(k["context"]) or real_sample(*a, **k))
  image = tmp_path / "content.png"
  Image.fromarray(clip.rgb[0]).save(image)
  result = pipe(depth=clip.disparity, image=str(image), num_inference_steps=STEPS)
  assert result.frames.shape == (tiny_model_dir.FRAMES, 32, 32, 3)
  # The content is the image's CLIP embedding, as one (1, 1, D) token; another image gives another.
  np.testing.assert_allclose(contexts[0][:, 0], generate.embed_images(pipe.model, pipe.params, clip.rgb[:1]),
                             rtol=1e-5, atol=1e-6)
  white = np.full((40, 24, 3), 255, np.uint8)  # another size: each image is preprocessed alone
  pipe(depth=clip.disparity, image=white, num_inference_steps=STEPS)
  assert contexts[1].shape == (1, 1, 16) and not np.allclose(contexts[1], contexts[0])
  # Several images (a list, or a folder of them) are one content: the mean of their embeddings.
  folder = tmp_path / "subject"
  folder.mkdir()
  Image.fromarray(clip.rgb[0]).save(folder / "a.png")
  Image.fromarray(white).save(folder / "b.png")
  (folder / "notes.txt").write_text("not an image")
  pipe(depth=clip.disparity, image=[str(image), white], num_inference_steps=STEPS)
  pipe(depth=clip.disparity, image=str(folder), num_inference_steps=STEPS)
  np.testing.assert_allclose(contexts[2], (contexts[0] + contexts[1]) / 2, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(contexts[3], contexts[2], rtol=1e-6, atol=1e-7)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(VidjaxError, match="empty.*folder without image files"):
    pipe(depth=clip.disparity, image=str(empty), num_inference_steps=STEPS)
  with pytest.raises(VidjaxError, match="prompt.*conditioned on CLIP image embeddings"):
    pipe(depth=clip.disparity, prompt=PROMPT)


def _not_a_video(tmp_path):
  path = tmp_path / "notes.mp4"
  path.write_text("this is not a video\n")
  return str(path)


def _empty_video(tmp_path):
  path = tmp_path / "empty.mp4"
  path.write_bytes(b"")
  return str(path)


def _zero_frame_video(tmp_path):
  """A valid mp4 container with a video stream and no frames."""
  path = tmp_path / "zero.mp4"
  import av
  with av.open(str(path), "w") as container:
    container.add_stream("mpeg4", rate=8).pix_fmt = "yuv420p"
  return str(path)


@pytest.mark.parametrize("case, match", [
    ("missing", "does not exist"),
    ("not_a_video", "notes.mp4"),
    ("empty", "empty"),
    ("zero_frames", "zero.mp4"),
    ("wrong_mask", "does not fit the video"),
    ("fidelity", "trained with t_s in \\[0, 2\\]"),
    ("temporal_guidance_scale", "temporal_guidance_scale"),
    ("window", "temporal_window"),
    ("image_for_text_model", "conditioned on text"),
    ("no_content", "prompt"),
    ("size", "not a multiple of 4"),
    ("steps", "num_inference_steps"),
])
def test_bad_inputs_are_refused_before_any_model_work(pipe, clip, tmp_path, case, match):
  args = dict(video=clip.rgb, depth=clip.disparity, prompt=PROMPT, num_inference_steps=STEPS)
  if case == "missing":
    args.update(video=str(tmp_path / "nope.mp4"), depth=None)
  elif case == "not_a_video":
    args.update(video=_not_a_video(tmp_path), depth=None)
  elif case == "empty":
    args.update(video=_empty_video(tmp_path), depth=None)
  elif case == "zero_frames":
    args.update(video=_zero_frame_video(tmp_path), depth=None)
  elif case == "wrong_mask":
    args.update(mask=np.ones((31, 32), bool))
  elif case == "fidelity":
    args.update(structure_fidelity=3)
  elif case == "temporal_guidance_scale":
    args.update(temporal_guidance_scale=-0.5)
  elif case == "window":
    args.update(temporal_window=0)
  elif case == "image_for_text_model":
    args.update(image=clip.rgb[0])
  elif case == "no_content":
    args.update(prompt=None)
  elif case == "size":
    args.update(height=30, width=32)
  elif case == "steps":
    args.update(num_inference_steps=0)
  traces = pipe.sampler_traces
  with pytest.raises(VidjaxError, match=match) as error:
    pipe(**args)
  assert "Fix:" in str(error.value) or "fix" in str(error.value).lower()
  assert pipe.sampler_traces == traces


@pytest.mark.parametrize("defaults, match", [({"cfg_scale": 2.0}, r"unknown sampling defaults \['cfg_scale'\]"),
                                             ({"guidance_scale": "high"}, "guidance_scale = 'high' is not a finite"),
                                             ({"eta": float("nan")}, "eta = nan is not a finite number"),
                                             ({"num_inference_steps": 2.5}, "is not an integer")])
def test_bad_sampling_defaults_in_a_checkpoint_are_refused_at_load(tmp_path, defaults, match):
  folder = tiny_model_dir.write(tmp_path / "bad", sampling_defaults=defaults)
  with pytest.raises(VidjaxError, match=match) as error:
    VideoEditPipeline.from_pretrained(folder)
  assert "config.json" in str(error.value)


def test_the_embedded_checkpoint_edits_offline():
  """The shipped toy model: present in the package, loadable, and an edit runs with nothing downloaded."""
  pipe = VideoEditPipeline.from_pretrained(progress=False)
  video = pipe.model_dir.video
  clip = toyworld.render_clip(1_000_003, num_frames=video["num_frames"], height=video["size"][0],
                              width=video["size"][1], stride=video["stride"])
  result = pipe(clip.rgb, depth=clip.disparity, prompt="a yellow cube and a purple sphere on a checkered floor "
                "at night", num_inference_steps=STEPS)
  assert result.frames.shape == clip.rgb.shape
  card = os.path.join(pipe.model_dir.path, "README.md")
  assert os.path.isfile(card) and "vidjax train --config configs/toy.py" in open(card).read()
  size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(pipe.model_dir.path) for f in files)
  assert size <= 20 * 2 ** 20


def test_the_embedded_checkpoint_is_tracked_by_git():
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  listed = subprocess.run(["git", "ls-files", "vidjax/assets/toy"], cwd=root, capture_output=True, text=True)
  if listed.returncode != 0:
    pytest.skip("not a git checkout")
  assert "vidjax/assets/toy/config.json" in listed.stdout.split()
