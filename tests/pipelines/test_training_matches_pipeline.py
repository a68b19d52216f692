"""Training and the edit pipeline condition a Gen-1 model the same way: CLIP image preprocessing and depth.

A model trained on one input convention and prompted with another sees inputs it never saw: these tests
feed the same frame (or depth) through the training path (`VideoDiffusionModel.embed_frames`, what
`train_step` uses) and through `VideoEditPipeline`, and compare what reaches the UNet.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import tiny_model_dir
from vidjax.pipelines.edit import VideoEditPipeline
from vidjax.pipelines.model_dir import load_model_dir


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
  folder = tmp_path_factory.mktemp("gen1") / "model"
  return VideoEditPipeline.from_pretrained(tiny_model_dir.write(folder, content="image", structure="depth_latent"),
                                           progress=False)


def test_training_and_the_pipeline_give_one_clip_embedding_for_one_frame(pipe):
  import jax

  # Not square (48 x 32 for a 32 x 32 tower): squashing and short-side-resize-plus-centre-crop differ.
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (48, 32, 3), dtype=np.uint8)
  image[:8] = 255  # a band that the centre crop removes and a squash keeps
  settings = pipe.check_settings(depth=np.zeros((4, 32, 32), np.float32), image=image)
  context, _ = pipe._encode_content(settings, [image])  # (1, 1, D), what the pipeline's UNet attends to
  # The training path: the loader's frames in [-1, 1], a clip of one frame repeated (any frame is picked).
  frames = np.repeat((image.astype(np.float32) / 127.5 - 1.0)[None, None], 3, axis=1)
  trained = pipe.model.embed_frames(pipe.params, frames, jax.random.key(0))  # (1, D)
  assert trained.shape == (1, context.shape[-1])
  np.testing.assert_allclose(np.asarray(trained), np.asarray(context)[:, 0], atol=1e-5)
  # The band matters to neither (it is cropped away), so the equality is not one of constant outputs.
  other = image.copy()
  other[:8] = 0
  moved = pipe.model.embed_frames(pipe.params, np.repeat((other.astype(np.float32) / 127.5 - 1.0)[None, None], 3,
                                                         axis=1), jax.random.key(0))
  np.testing.assert_allclose(np.asarray(moved), np.asarray(trained), atol=1e-5)
  other[20:28] = 0  # inside the crop: the embedding moves
  moved = pipe.model.embed_frames(pipe.params, (other.astype(np.float32) / 127.5 - 1.0)[None, None], jax.random.key(0))
  assert np.abs(np.asarray(moved) - np.asarray(trained)).max() > 1e-3


def test_the_export_records_the_depth_normalization_training_used_and_the_pipeline_checks_it(tmp_path):
  from vidjax.convert import common, pretrained
  from vidjax.errors import ConfigError
  from vidjax.models.video_model import DEPTH_NORMALIZATION
  from vidjax.train import export

  gen1 = load_model_dir(tiny_model_dir.write(tmp_path / "gen1", content="image", structure="depth_latent"))
  sd2 = load_model_dir(tiny_model_dir.write(tmp_path / "sd2", content="image"))
  # What encode_structure does, per structure, is what the export writes.
  assert export.conditioning_entry(gen1.model.config)["depth_normalization"] == "per_clip_minmax"
  assert export.conditioning_entry(sd2.model.config)["depth_normalization"] == "per_frame_minmax"
  assert DEPTH_NORMALIZATION["depth_latent"] == "per_clip_minmax"
  # 'per_clip_minmax' is true: one frame's depth latents change when another frame's range changes.
  depth = np.random.default_rng(0).uniform(0, 1, (1, 2, 32, 32, 1)).astype(np.float32)
  wider = depth.copy()
  wider[0, 1] *= 3.0
  fidelity = np.zeros((1,), np.int32)
  first = lambda d: np.asarray(gen1.model.encode_structure(gen1.params, d, fidelity, (16, 16)))[0, 0]
  assert np.abs(first(depth) - first(wider)).max() > 1e-4
  # A manifest that says otherwise is refused by the pipeline's loader, naming the entry.
  folder = tmp_path / "gen1"
  manifest = common.read_json(folder / pretrained.CONFIG_FILE)
  manifest["conditioning"]["depth_normalization"] = "per_frame_minmax"
  (folder / pretrained.CONFIG_FILE).write_text(json.dumps(manifest))
  with pytest.raises(ConfigError, match="depth_normalization.*per_clip_minmax"):
    load_model_dir(folder)
