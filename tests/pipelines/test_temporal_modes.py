"""The per-frame image model (`image_mode`) and full causal attention over long clips, on a tiny random checkpoint."""

import numpy as np
import pytest

import tiny_model_dir
from vidjax.errors import InputError
from vidjax.pipelines.edit import VideoEditPipeline
from vidjax.sampling import generate

PROMPT = "a red cube on a plain floor at night"
STEPS = 2


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
  return VideoEditPipeline.from_pretrained(tiny_model_dir.write(tmp_path_factory.mktemp("models") / "text"),
                                           progress=False)


def _depth(frames: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).random((frames, 32, 32)).astype(np.float32)


def test_image_mode_edits_each_frame_on_its_own(pipe):
  depth = _depth(tiny_model_dir.FRAMES)
  changed = depth.copy()
  changed[0] = _depth(1, seed=1)[0]  # only the first frame's structure differs
  run = lambda d, **kw: pipe(depth=d, prompt=PROMPT, num_inference_steps=STEPS, seed=3, **kw).frames
  image_a, image_b = run(depth, image_mode=True), run(changed, image_mode=True)
  video_a, video_b = run(depth), run(changed)
  # The image model: frames 1.. do not see frame 0. The video model: its temporal layers carry the change on.
  np.testing.assert_array_equal(image_a[1:], image_b[1:])
  assert np.abs(image_a[0].astype(int) - image_b[0]).max() > 0
  assert np.abs(video_a[1:].astype(int) - video_b[1:]).max() > 0
  assert np.abs(image_a.astype(int) - video_a).max() > 0


def test_image_mode_refuses_temporal_guidance(pipe):
  with pytest.raises(InputError, match="image_mode.*temporal_guidance_scale=1"):
    pipe(depth=_depth(tiny_model_dir.FRAMES), prompt=PROMPT, num_inference_steps=STEPS, image_mode=True,
         temporal_guidance_scale=2.0)
  with pytest.raises(InputError, match="image_mode"):
    pipe(depth=_depth(tiny_model_dir.FRAMES), prompt=PROMPT, num_inference_steps=STEPS, image_mode="yes")


def test_a_window_of_the_whole_clip_is_full_causal_attention(pipe):
  frames = 3 * tiny_model_dir.FRAMES  # longer than the band's exact windows (up to relative_position + 1)
  depth = _depth(frames)
  full = pipe(depth=depth, prompt=PROMPT, num_inference_steps=STEPS, seed=5, num_frames=frames,
              temporal_window=frames).frames
  windowed = pipe(depth=depth, prompt=PROMPT, num_inference_steps=STEPS, seed=5, num_frames=frames,
                  temporal_window=tiny_model_dir.FRAMES).frames
  # The whole past is the sampler's window None (one (T, T) causal mask), not the largest band.
  side = 32 // pipe.model.config.vae.downsample_factor
  structure = generate.encode_structure(pipe.model, pipe.params, depth[None, ..., None], np.zeros((1,), np.int32),
                                        (side, side))
  context, null_context = generate.encode_content(pipe.model, pipe.params, tokens=pipe.model_dir.tokenizer([PROMPT]))
  latents = generate.sample_latents(pipe.model, pipe.params, structure=structure, context=context,
                                    null_context=null_context, shape=(1, frames, side, side, 4), seed=5,
                                    num_inference_steps=STEPS, guidance_scale=pipe.model_dir.sampling_defaults[
                                        "guidance_scale"], temporal_window=None, scheduler=pipe.model_dir.scheduler)
  direct = generate.decode_frames(pipe.model, pipe.params, latents)[0].astype(int)
  # Up to float rounding (the pipeline resamples its depth input onto the same grid first).
  assert np.abs(full - direct).mean() < 0.1 * np.abs(windowed - direct).mean()


@pytest.mark.parametrize("window, num_frames", [(7, 12), (12, None)])
def test_a_window_beyond_the_band_must_cover_the_whole_clip(pipe, window, num_frames):
  with pytest.raises(InputError, match="L_M >= num_frames"):
    pipe(depth=_depth(12), prompt=PROMPT, num_inference_steps=STEPS, num_frames=num_frames, temporal_window=window)
