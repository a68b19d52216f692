"""Gen-1's four training stages end to end on toy data, built from the real stage configs (sizes only
overridden), each `init_from` the last, then an edit of the exported stage-4 run with a reference image.

stage 0 (a stand-in for the converted SD checkpoint: random tiny UNet with a 16-wide text context,
         VAE and CLIP vision tower) -> 1 (images, image content, change_context_width to 12)
-> 2 (+ temporal layers, 12.5 % image batches) -> 3 (+ 'depth_latent', widen_input_channels, t_s = 0)
-> 4 (t_s in 0..7).
"""

from __future__ import annotations

import importlib

import jax
import numpy as np
import pytest
from PIL import Image

import tiny_config
from configs import base
from vidjax import tree
from vidjax.convert import pretrained
from vidjax.pipelines.edit import VideoEditPipeline
from vidjax.sampling import generate
from vidjax.train import export, loop, surgery
from vidjax.train.checkpoint import Checkpointer

STEPS, FRAMES, SIZE, WIDTH = 2, 4, 16, 12  # WIDTH: the toy CLIP image embedding (ViT-L/14's 768)
# Gen-1's aspect buckets (configs/gen1.py: 320x320, 320x384, 384x320, ...) at 1/20 of their size, rounded to
# the tiny model's size multiple (4): the real ones would run these tiny stages at 448x256 pixels.
TINY_BUCKETS = ((16, 16), (16, 20), (20, 16))


def gen1_tiny(stage: int, data_dir: str, init_from: str):
  """configs/gen1_stage{stage}.py with toy sizes; every stage-specific field comes from the real config."""
  config = importlib.import_module(f"configs.gen1_stage{stage}").get_config()
  real = config.model.unet
  tiny = tiny_config.tiny_config()
  config.data.update(data_dir=data_dir, batch_size=8, image_batch_size=8, prefetch_batches=0, read_threads=1,
                     image_buckets=TINY_BUCKETS)
  config.model.vae = tiny.model.vae
  config.model.image_encoder.update(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                                    image_size=SIZE, patch_size=8, projection_dim=WIDTH)
  config.model.unet = base.unet_fields(
      in_channels=real.in_channels, block_out_channels=(8, 16), layers_per_block=1, attention_levels=(True, True),
      num_attention_heads=(2, 2), cross_attention_dim=WIDTH, norm_num_groups=4, temporal_conv=real.temporal_conv,
      temporal_attention=real.temporal_attention, temporal_max_frames=FRAMES)
  config.mesh = tiny.mesh
  config.init_from = init_from
  config.train.update(num_steps=STEPS, warmup_steps=1, lr=1e-3, lr_schedule="constant")
  config.checkpoint.update(every_steps=STEPS, keep=2, async_save=False)
  config.log.update(every_steps=STEPS, sample_every_steps=STEPS, sample_num_inference_steps=2)
  return config


def _stage0(folder: str, data_dir: str) -> str:
  """The converted-SD stand-in: stage 1's components, its UNet with a 16-wide (text) cross-attention."""
  rng = np.random.default_rng(0)
  components = {}
  for width, names in ((16, ("unet",)), (WIDTH, ("vae", "image_encoder"))):
    config = gen1_tiny(1, data_dir, "")
    config.model.unet.cross_attention_dim = config.model.image_encoder.projection_dim = width
    model = loop.build_model(config)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    for name in names:
      params = jax.tree.map(lambda s: (rng.standard_normal(s.shape) * 0.1).astype(np.float32), shapes[name])
      components[name] = (getattr(model.config, name), params)
  return pretrained.save_pretrained(folder, components)


def _fresh_params(config):
  """Zeros in the stage's param shapes: what `_init_from` merges the previous stage into."""
  c = loop.build_model(config).config
  return {name: jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), pretrained.param_shapes(getattr(c, name)))
          for name in ("unet", "vae", "image_encoder")}


@pytest.fixture(scope="module")
def chain(tmp_path_factory, loop_base):
  root = tmp_path_factory.mktemp("gen1")
  previous = _stage0(str(root / "stage0"), loop_base["data.data_dir"])
  runs, configs, samples = {0: previous}, {}, {}
  real_summary = loop.sample_summary
  with pytest.MonkeyPatch.context() as patch:
    for stage in (1, 2, 3, 4):
      def spy(*args, _stage=stage, **kwargs):
        video = real_summary(*args, **kwargs)
        samples.setdefault(_stage, []).append(video)
        return video
      patch.setattr(loop, "sample_summary", spy)
      configs[stage] = gen1_tiny(stage, loop_base["data.data_dir"], previous)
      workdir = str(root / f"stage{stage}")
      summary = loop.train_and_evaluate(configs[stage], workdir)
      assert summary["step"] == STEPS and np.isfinite(summary["last_smoothed_loss"])
      runs[stage] = previous = workdir
  exported = export.export_run(runs[4], str(root / "exported"))
  return {"runs": runs, "configs": configs, "samples": samples, "exported": exported}


def test_each_stage_writes_a_checkpoint_and_a_sample_summary(chain):
  for stage in (1, 2, 3, 4):
    with Checkpointer(f"{chain['runs'][stage]}/checkpoints", async_save=False) as checkpointer:
      assert checkpointer.latest_step() == STEPS
    (video,) = chain["samples"][stage]
    if stage == 1:  # images only: its sample is one frame, at the first image batch's bucket
      assert video.shape[:2] == (1, 1) and video.shape[2:4] in TINY_BUCKETS and video.shape[4] == 3
    else:  # the first video batch: clips keep their stored size
      assert video.shape == (1, FRAMES, SIZE, SIZE, 3)
    assert video.dtype == np.uint8


def test_surgery_keeps_what_it_should_and_inits_what_it_adds(chain):
  runs, configs = chain["runs"], chain["configs"]
  weights = {stage: surgery.load_weights(runs[stage]) for stage in (0, 1, 2, 3, 4)}
  stage0 = weights[0]["unet"]
  stage1 = loop._init_from(configs[1], _fresh_params(configs[1]), None)["unet"]
  # change_context_width: cross-attention keys/values re-made for the 12-wide image embedding, the rest kept.
  attn = stage1["down_blocks_0"]["attentions_0"]["transformer_blocks_0"]
  source_attn = stage0["down_blocks_0"]["attentions_0"]["transformer_blocks_0"]
  assert attn["attn2"]["to_k"]["kernel"].shape[0] == WIDTH != source_attn["attn2"]["to_k"]["kernel"].shape[0]
  np.testing.assert_array_equal(attn["attn1"]["to_q"]["kernel"], source_attn["attn1"]["to_q"]["kernel"])
  np.testing.assert_array_equal(stage1["conv_in"]["kernel"], stage0["conv_in"]["kernel"])

  stage1_final = weights[1]["unet"]
  stage2 = loop._init_from(configs[2], _fresh_params(configs[2]), None)["unet"]
  flat2, flat1 = tree.flatten(stage2), tree.flatten(stage1_final)
  temporal = [p for p in flat2 if "temporal" in "/".join(p)]
  assert temporal and all(p not in flat1 for p in temporal)  # stage 2 adds them; they keep their own init
  for path, value in flat1.items():
    np.testing.assert_array_equal(flat2[path], value, err_msg="/".join(path))

  stage2_final = weights[2]["unet"]
  stage3 = loop._init_from(configs[3], _fresh_params(configs[3]), None)["unet"]
  kernel = stage3["conv_in"]["kernel"]  # (3, 3, 4 latent + 4 depth latent + 4 t_s, out)
  assert kernel.shape[2] == 12
  np.testing.assert_array_equal(kernel[:, :, :4], stage2_final["conv_in"]["kernel"])
  assert not np.any(kernel[:, :, 4:])  # widen_input_channels: the structure channels start at zero

  # The frozen towers are stage 0's all the way through, and training changed the UNet.
  for stage in (1, 2, 3, 4):
    for name in ("vae", "image_encoder"):
      for a, b in zip(jax.tree.leaves(weights[stage][name]), jax.tree.leaves(weights[0][name])):
        np.testing.assert_array_equal(a, b)
  assert not np.array_equal(weights[4]["unet"]["conv_in"]["kernel"], weights[3]["unet"]["conv_in"]["kernel"])


def test_the_exported_stage4_run_edits_with_a_reference_image(chain, tmp_path, monkeypatch):
  """The reference image's CLIP embedding is the context the sampler gets, and it moves the latents.

  Frames are not compared across references: two steps per stage from a random tiny CLIP give red and
  blue embeddings about 0.005 apart, which moves the latents by ~5e-5 and the uint8 frames not at all
  (measured). What a trained tower does with the content is the toy Gen-1 benchmark's business
  (configs/toy_gen1.py: image prompting on held-out scenes).
  """
  pipe = VideoEditPipeline.from_pretrained(chain["exported"], progress=False)
  sampled = []
  real_sample = generate.sample_latents

  def spy(*args, **kwargs):
    latents = real_sample(*args, **kwargs)
    sampled.append((np.asarray(kwargs["context"]), np.asarray(latents)))
    return latents

  monkeypatch.setattr(generate, "sample_latents", spy)
  depth = np.random.default_rng(0).random((FRAMES, SIZE, SIZE)).astype(np.float32)
  images = [np.full((SIZE, SIZE, 3), colour, np.uint8) for colour in ((230, 20, 20), (20, 20, 230))]
  paths = []
  for i, image in enumerate(images):
    paths.append(tmp_path / f"ref{i}.png")
    Image.fromarray(image).save(paths[-1])
  edit = lambda path: pipe(depth=depth, image=str(path), num_inference_steps=2, seed=0).frames
  first = edit(paths[0])
  assert first.shape == (FRAMES, SIZE, SIZE, 3) and first.dtype == np.uint8
  np.testing.assert_array_equal(edit(paths[0]), first)
  edit(paths[1])
  (red, red_latents), (red_again, red_latents_again), (blue, blue_latents) = sampled
  np.testing.assert_array_equal(red_again, red)
  np.testing.assert_array_equal(red_latents_again, red_latents)
  want = generate.embed_images(pipe.model, pipe.params, images[0][None])
  np.testing.assert_allclose(red[:, 0], np.asarray(want), rtol=1e-5, atol=1e-6)  # one (1, 1, D) token
  assert red.shape == (1, 1, WIDTH) and not np.allclose(red, blue)
  assert np.abs(blue_latents - red_latents).max() > 1e-6
