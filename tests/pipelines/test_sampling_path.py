"""One sampling path: the edit pipeline and the trainer's sample summaries give the same video."""

from __future__ import annotations

import jax
import numpy as np

import tiny_model_dir
from vidjax import toyworld
from vidjax.conditioning import structure
from vidjax.pipelines.edit import VideoEditPipeline
from vidjax.sampling import generate
from vidjax.train import loop

PROMPT = "a red cube on a plain floor at night"


def test_the_pipeline_and_the_training_summary_give_the_same_video_from_one_compiled_loop(tmp_path):
  pipe = VideoEditPipeline.from_pretrained(tiny_model_dir.write(tmp_path / "text"), progress=False)
  depth = toyworld.render_clip(7, num_frames=tiny_model_dir.FRAMES, height=32, width=32, stride=1).disparity
  edited = pipe(depth=depth, prompt=PROMPT, seed=3, num_inference_steps=2, guidance_scale=5.0)
  # What the training loop logs for the same depth (as the loader gives it: t_s = 0, unnormalised) and caption.
  summary = loop.sample_summary(pipe.model, pipe.params,
                                {"depth": depth[None, ..., None], "tokens": pipe.model_dir.tokenizer([PROMPT])},
                                num_inference_steps=2, seed=3)
  assert summary.dtype == np.uint8 and summary.shape == (1, *edited.frames.shape)
  np.testing.assert_array_equal(edited.frames, summary[0])
  # One Sampler for both (one cache): traced twice, for the pipeline's L_M = 4 and training's whole past.
  assert len(generate._SAMPLERS[pipe.model]) == 1 and pipe.sampler_traces == 2
  other = loop.sample_summary(pipe.model, pipe.params,
                              {"depth": depth[None, ..., None], "tokens": pipe.model_dir.tokenizer([PROMPT])},
                              num_inference_steps=2, seed=4)
  assert not np.array_equal(other, summary)  # the seed is used, so equality above is not vacuous
  assert pipe.sampler_traces == 2  # a new seed reuses the compiled loop


def test_the_training_summary_of_a_gen1_model_uses_the_batchs_structure_fidelity(tmp_path):
  """The loader blurs depth by each clip's t_s; a 'depth_latent' model also reads t_s as 4 channels. The
  summary must give it the t_s its depth was blurred with, as the pipeline does."""
  pipe = VideoEditPipeline.from_pretrained(tiny_model_dir.write(tmp_path / "gen1", structure="depth_latent"),
                                           progress=False)
  disparity = toyworld.render_clip(8, num_frames=tiny_model_dir.FRAMES, height=32, width=32, stride=1).disparity
  edited = pipe(depth=disparity, prompt=PROMPT, seed=5, num_inference_steps=2, guidance_scale=5.0,
                structure_fidelity=2)
  # A loader batch of that clip drawn at t_s = 2 (its depth blurred accordingly), as the loop keeps it.
  batch = {"frames": np.zeros((1, tiny_model_dir.FRAMES, 32, 32, 3), np.float32),
           "depth": structure.augment_structure(disparity, 2)[None, ..., None],
           "structure_fidelity": np.asarray([2], np.int32), "tokens": pipe.model_dir.tokenizer([PROMPT])}
  summary = loop.sample_summary(pipe.model, pipe.params, loop.sample_conditioning(batch), num_inference_steps=2,
                                seed=5)
  np.testing.assert_array_equal(edited.frames, summary[0])


def test_frames_are_rounded_to_uint8_not_truncated():
  levels = generate.to_uint8(np.asarray([-1.0, -2.0, 1.0, 3.0, 127.6 / 127.5 - 1.0, 127.4 / 127.5 - 1.0]))
  np.testing.assert_array_equal(levels, [0, 0, 255, 255, 128, 127])


def test_the_training_summary_of_an_image_content_model_embeds_the_batchs_first_frame(tmp_path):
  """Loader batches carry frames, never image_embeds: the summary's content is the CLIP embedding of the
  first clip's first frame, from the model's frozen image encoder, as the train step embeds frames."""
  pipe = VideoEditPipeline.from_pretrained(tiny_model_dir.write(tmp_path / "image", content="image"), progress=False)
  clip = toyworld.render_clip(7, num_frames=tiny_model_dir.FRAMES, height=32, width=32, stride=1)
  frames = (clip.rgb[None].astype(np.float32) / 127.5 - 1.0)
  batch = {"frames": np.concatenate([frames, frames[:, ::-1]]), "depth": clip.disparity[None, ..., None].repeat(2, 0),
           "structure_fidelity": np.zeros((2,), np.int32)}
  conditioning = loop.sample_conditioning(batch, pipe.model, pipe.params)
  expected = pipe.model.embed_frames(pipe.params, frames[:, :1], jax.random.key(5))
  assert conditioning["image_embeds"].shape == (1, 16)
  np.testing.assert_allclose(conditioning["image_embeds"], expected, rtol=1e-5, atol=1e-6)
  summary = loop.sample_summary(pipe.model, pipe.params, conditioning, num_inference_steps=2, seed=3)
  assert summary.dtype == np.uint8 and summary.shape == (1, tiny_model_dir.FRAMES, 32, 32, 3)
  last = loop.sample_conditioning({**batch, "frames": frames[:, ::-1]}, pipe.model, pipe.params)
  assert not np.allclose(last["image_embeds"], conditioning["image_embeds"])  # the frame's content is used
