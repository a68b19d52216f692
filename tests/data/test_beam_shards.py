"""`vidjax build-shards` on Apache Beam's DirectRunner: same bytes for any worker count, after a SIGKILL, as the
local builder; bad items listed with reasons; cached latents and CLIP embeddings; several clips per video
(vidjax.data.clips)."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import flax.linen as nn
import jax
import numpy as np
import pytest
from data_fakes import build_toy_shards, folder_args, make_video_folder, toy_frames, write_depth, write_video

pytest.importorskip("apache_beam")

from data_pipelines import beam_shards, build_shards, encoders  # noqa: E402
from vidjax.convert import pretrained  # noqa: E402
from vidjax.data import clips, loader, records, shards, video_io  # noqa: E402
from vidjax.data.sources import ClipSpec, ToySource  # noqa: E402
from vidjax.models import clip  # noqa: E402
from vidjax.models.vae import VAEConfig  # noqa: E402
from vidjax.errors import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, InputError  # noqa: E402
from vidjax.toyworld import save_tokenizer  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
FRAMES, STRIDE = 4, 2  # build_toy_shards' and folder_args' clips: span 7


def folder_bytes(folder) -> dict[str, bytes]:
  """Every file under `folder` (relative path -> contents): shards, markers, jsonl files, manifest."""
  folder = pathlib.Path(folder)
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, bytes]:
  """7 toy clips in 3 shards built by the DirectRunner with 1 worker (in this process)."""
  out = tmp_path_factory.mktemp("reference")
  assert build_toy_shards(out, 7, examples_per_shard=3) == EXIT_OK
  return folder_bytes(out)


def test_one_and_two_workers_and_the_local_builder_write_the_same_bytes(reference, tmp_path):
  assert build_toy_shards(tmp_path / "two", 7, examples_per_shard=3, extra=("--num_workers", "2")) == EXIT_OK
  assert build_toy_shards(tmp_path / "local", 7, examples_per_shard=3,  # the toy main job's process pool
                          extra=("--runner", "local", "--num_workers", "2")) == EXIT_OK
  assert sorted(reference) == ["done/" + records.shard_name(i, 3) + ".json" for i in range(3)] + [
      records.MANIFEST_NAME, records.shard_name(0, 3), records.shard_name(1, 3), records.shard_name(2, 3),
      records.SKIPPED_NAME, build_shards.WARNINGS_NAME]
  assert folder_bytes(tmp_path / "two") == reference
  assert folder_bytes(tmp_path / "local") == reference
  manifest = json.loads(reference[records.MANIFEST_NAME])
  assert len(manifest["fingerprint"]) == 64 and manifest["num_examples"] == 7


_KILLABLE = textwrap.dedent("""
    import sys, time
    from data_pipelines import build_shards
    from vidjax.data import shards
    commit = shards.commit_shard
    def slow_commit(*args, **kwargs):  # leaves time to kill the run between two commits
      result = commit(*args, **kwargs)
      time.sleep(3)
      return result
    shards.commit_shard = slow_commit
    sys.exit(build_shards.main(sys.argv[1:]))
""")


def test_a_run_killed_half_way_and_run_again_gives_the_same_bytes(reference, tmp_path):
  out = tmp_path / "killed"
  args = ["--source", "toy", "--num_examples", "7", "--output_dir", str(out), "--num_frames", str(FRAMES),
          "--stride", str(STRIDE), "--height", "16", "--width", "16", "--examples_per_shard", "3"]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
  process = subprocess.Popen([sys.executable, "-c", _KILLABLE, *args], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 120
    while not (out / "done").is_dir() or not os.listdir(out / "done"):
      assert process.poll() is None and time.monotonic() < deadline, "the run ended before its first commit"
      time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
  finally:
    process.kill()
    process.wait()
  committed = sorted(os.listdir(out / "done"))
  assert 1 <= len(committed) < 3 and not (out / records.MANIFEST_NAME).exists()  # half-way: no manifest
  for name in os.listdir(out):  # nothing half-written under a shard's name
    assert not name.startswith("shard-") or name + ".json" in committed
  first = (out / records.shard_name(0, 3)).stat().st_mtime_ns
  assert build_shards.main(args) == EXIT_OK
  assert folder_bytes(out) == reference
  assert (out / records.shard_name(0, 3)).stat().st_mtime_ns == first  # the committed shard was kept, not rebuilt


def test_bad_videos_exit_3_with_reasons_on_two_workers(tmp_path, capsys):
  root = tmp_path / "videos"
  make_video_folder(root)
  for key in ("good", "clips/good2", "one_frame", "truncated", "empty", "notes"):
    write_depth(root / "depth", key, (FRAMES, 16, 24))
  beam = tmp_path / "beam"
  assert build_shards.main(folder_args(root, beam, "--examples_per_shard", "2", "--num_workers", "2")) == EXIT_PARTIAL
  skipped = [json.loads(line) for line in (beam / records.SKIPPED_NAME).read_text().splitlines()]
  assert [s["key"] for s in skipped] == ["one_frame", "truncated", "empty", "notes"]  # in the captions' order
  reasons = {s["key"]: s["reason"] for s in skipped}
  assert "too short: 1 frames" in reasons["one_frame"]
  assert all(s["source"] == str(root / (s["key"] + ".mp4")) and s["reason"] for s in skipped)
  err = capsys.readouterr().err
  assert all(f"skipped {s['source']}: {s['reason']}" in err for s in skipped)
  source = records.ExampleSource(beam)
  assert [source[i]["key"] for i in range(len(source))] == ["good", "clips/good2"]
  assert [s.path for s in source.manifest.shards] == [records.shard_name(0, 3)]  # shards 1, 2: all skipped
  assert build_shards.main(folder_args(root, tmp_path / "local", "--examples_per_shard", "2",
                                       "--runner", "local")) == EXIT_PARTIAL
  assert folder_bytes(beam) == folder_bytes(tmp_path / "local")


def fake_vae(frames: np.ndarray) -> np.ndarray:
  """(N, H, W, 3) uint8 -> (N, H/4, W/4, 4): 4x4 mean pooling plus the frame's mean (a per-frame fake VAE)."""
  n, h, w, _ = frames.shape
  pooled = frames.reshape(n, h // 4, 4, w // 4, 4, 3).mean(axis=(2, 4)) / 255.0
  return np.concatenate([pooled, np.broadcast_to(pooled.mean(axis=(1, 2, 3))[:, None, None, None], pooled.shape[:3] + (1,))], -1)


def fake_clip(frames: np.ndarray) -> np.ndarray:
  """(N, H, W, 3) uint8 -> (N, 5): each frame's mean colour, brightest and darkest pixel (a fake CLIP image tower)."""
  flat = frames.reshape(len(frames), -1, 3).astype(np.float32) / 255.0
  return np.concatenate([flat.mean(1), flat.max((1, 2))[:, None], flat.min((1, 2))[:, None]], -1)


def test_latents_and_clip_embeddings_are_cached_per_clip_through_beam(tmp_path):
  spec = shards.BuildSpec(ToySource(5, 0), ClipSpec(FRAMES, STRIDE, 16, 16), str(tmp_path / "beam"), "toy",
                          examples_per_shard=3, encode_fn=fake_vae, embed_fn=fake_clip)
  assert beam_shards.build(spec, ["--runner", "DirectRunner"]).exit_status == EXIT_OK
  source = records.ExampleSource(tmp_path / "beam")
  assert source.manifest.fields["latents"] == records.FieldSpec((FRAMES, 4, 4, 4), "float16")
  assert source.manifest.fields["clip_embeddings"] == records.FieldSpec((FRAMES, 5), "float16")
  for i in range(5):  # computed on batches of several clips' frames, equal to the clip's own
    frames = source[i]["frames"]
    np.testing.assert_array_equal(source[i]["latents"], fake_vae(frames).astype(np.float16))
    np.testing.assert_array_equal(source[i]["clip_embeddings"], fake_clip(frames).astype(np.float16))
  local = dataclasses.replace(spec, output_dir=str(tmp_path / "local"))
  assert shards.build_shards(local).exit_status == EXIT_OK
  assert folder_bytes(tmp_path / "local") == folder_bytes(tmp_path / "beam")
  config = loader.default_loader_config()  # the loader reads them unchanged, latents included
  config.data_dir, config.batch_size, config.use_latents, config.image_fraction = spec.output_dir, 2, True, 0.0
  batch = next(loader.Loader(config, process_index=0, process_count=1))
  assert batch["latents"].shape == (2, FRAMES, 4, 4, 4)


def test_vae_dir_and_clip_dir_cache_a_converted_models_latents_and_embeddings(tmp_path):
  vae = VAEConfig(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4)
  vision = clip.CLIPVisionConfig(hidden_size=16, intermediate_size=23, num_attention_heads=2, num_hidden_layers=1,
                                 image_size=16, patch_size=8, projection_dim=7)
  rng = np.random.default_rng(0)
  vae_params = jax.tree.map(lambda s: rng.normal(0, 0.2, s.shape).astype(np.float32), pretrained.param_shapes(vae))
  clip_params = nn.unbox(clip.CLIPVisionTransformer(vision).init(jax.random.key(0), np.zeros((1, 16, 16, 3))))["params"]
  weights = pretrained.save_pretrained(tmp_path / "weights", {"vae": (vae, vae_params), "image_encoder": (vision, clip_params)})
  out = tmp_path / "shards"
  assert build_toy_shards(out, 3, extra=("--vae_dir", weights, "--clip_dir", weights)) == EXIT_OK
  source = records.ExampleSource(out)
  assert source.manifest.fields["latents"] == records.FieldSpec((FRAMES, 8, 8, 4), "float16")
  assert source.manifest.fields["clip_embeddings"] == records.FieldSpec((FRAMES, 7), "float16")
  for i in range(3):
    frames = source[i]["frames"]
    np.testing.assert_allclose(source[i]["latents"], encoders.VaeLatents(weights)(frames), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(source[i]["clip_embeddings"], encoders.ClipEmbeddings(weights)(frames), rtol=2e-3,
                               atol=2e-3)
  assert float(np.std(source[0]["latents"])) > 0.01  # a real encoding, not zeros
  assert build_toy_shards(tmp_path / "no_clip", 3, extra=("--clip_dir", str(tmp_path))) == EXIT_ERROR


def test_unknown_flags_exit_2_and_beam_options_pass_through(tmp_path, capsys):
  assert build_toy_shards(tmp_path / "typo", 2, extra=("--num_exmaples", "5")) == EXIT_ERROR
  assert "--num_exmaples: unknown flag" in capsys.readouterr().err
  assert build_toy_shards(tmp_path / "local", 2, extra=("--runner", "local", "--direct_num_workers", "2")) == EXIT_ERROR
  assert not (tmp_path / "typo").exists() and not (tmp_path / "local").exists()  # nothing written
  # Beam's own options reach Beam: its threads instead of its processes, the same bytes.
  assert build_toy_shards(tmp_path / "threads", 4, examples_per_shard=2, extra=(
      "--direct_num_workers", "2", "--direct_running_mode", "multi_threading")) == EXIT_OK
  assert build_toy_shards(tmp_path / "one", 4, examples_per_shard=2) == EXIT_OK
  assert folder_bytes(tmp_path / "threads") == folder_bytes(tmp_path / "one")


def test_a_10_s_video_at_a_clip_stride_of_2_s_gives_5_clips_with_their_offsets(tmp_path):
  fps, root = 12, tmp_path / "videos"
  root.mkdir()
  write_video(root / "long.mp4", toy_frames(5, 10 * fps, size=16), fps=fps)  # 120 frames
  (root / "captions.csv").write_text("path,caption\nlong.mp4,a long video\n")
  starts = [0, 24, 48, 72, 96]  # every 2 s while a 7-frame span fits in 120 frames
  for start in starts:
    write_depth(root / "depth", f"long@{start}", (FRAMES, 16, 16))
  args = ["--source", "folder", "--captions", str(root / "captions.csv"), "--output_dir", str(tmp_path / "shards"),
          "--num_frames", str(FRAMES), "--stride", str(STRIDE), "--height", "16", "--width", "16", "--depth",
          "folder", "--depth_dir", str(root / "depth"), "--clip_stride", str(2 * fps), "--clips_per_video", "0"]
  assert build_shards.main(args) == EXIT_OK
  source = records.ExampleSource(tmp_path / "shards")
  assert source.manifest.fields["start_frame"] == records.FieldSpec((), "int32")
  video = video_io.read_video(root / "long.mp4")
  assert [int(source[i]["start_frame"]) for i in range(len(source))] == starts
  for i, start in enumerate(starts):
    assert source[i]["key"] == f"long@{start}" and source[i]["caption"] == "a long video"
    np.testing.assert_array_equal(source[i]["frames"], video[start:start + 7:STRIDE])
  config = loader.default_loader_config()  # the loader reads these shards unchanged
  config.data_dir, config.batch_size, config.image_fraction = str(tmp_path / "shards"), 5, 0.0
  config.tokenizer_dir = save_tokenizer(tmp_path / "tokenizer")
  batch = next(loader.Loader(config, process_index=0, process_count=1))
  assert batch["frames"].shape == (5, FRAMES, 16, 16, 3)


def test_clip_starts_fixed_random_and_minimum_length():
  clip = clips.ClipSpec(FRAMES, STRIDE, 16, 16, clips_per_video=3, clip_stride=10)
  assert clip.from_start is False and clips.clip_starts(50, clip, "v") == [0, 10, 20]
  assert clips.clip_starts(50, clips.ClipSpec(FRAMES, STRIDE, 16, 16), "v") == [0]  # the default: one, from 0
  rand = clips.ClipSpec(FRAMES, STRIDE, 16, 16, clips_per_video=2, clip_stride=10, clip_offsets="random", seed=3)
  drawn = {key: clips.clip_starts(50, rand, key) for key in ("a", "b", "c", "d")}
  assert drawn == {key: clips.clip_starts(50, rand, key) for key in drawn}  # the same on every rebuild
  for starts in drawn.values():
    assert len(starts) == 2 and starts == sorted(starts) and starts[1] + clip.span <= 50
    assert len({s % 10 for s in starts}) == 1  # one phase: the grid is shifted, not broken
  assert len({tuple(s) for s in drawn.values()}) > 1  # and it differs between videos
  other_seed = clips.ClipSpec(FRAMES, STRIDE, 16, 16, clips_per_video=2, clip_stride=10, clip_offsets="random", seed=4)
  assert [clips.clip_starts(50, other_seed, key) for key in drawn] != list(drawn.values())
  short = np.zeros((9, 8, 8, 3), np.uint8)
  with pytest.raises(InputError, match="too short: 9 frames, --min_video_frames is 10"):
    clips.cut_clips(short, clips.ClipSpec(FRAMES, STRIDE, 8, 8, min_video_frames=10), "short.mp4", "short")
  with pytest.raises(InputError, match="--clip_offsets sometimes: unknown clip offsets"):
    clips.ClipSpec(FRAMES, STRIDE, 8, 8, clip_offsets="sometimes").check()


def test_scene_cuts_split_the_video_and_no_clip_crosses_one():
  video = np.concatenate([np.full((20, 8, 8, 3), 10, np.uint8), np.full((12, 8, 8, 3), 200, np.uint8)])
  video[:, 0, 0] = np.arange(32, dtype=np.uint8)[:, None]  # slow motion inside a scene: no cut
  assert clips.scene_bounds(video, 30.0) == [(0, 20), (20, 32)]
  clip = clips.ClipSpec(FRAMES, STRIDE, 8, 8, clips_per_video=0, scene_cut_threshold=30.0)
  cut = clips.cut_clips(video, clip, "two_scenes.mp4", "two_scenes")
  assert [start for start, _ in cut] == [0, 7, 20]  # 13..19 and 27..31 are shorter than a span
  assert all(len(np.unique(frames[:, 1:])) == 1 for _, frames in cut)  # each clip inside one scene
  assert [start for start, _ in clips.cut_clips(video, dataclasses.replace(clip, scene_cut_threshold=0.0), "v", "v")] \
      == [0, 7, 14, 21]
  with pytest.raises(InputError, match="no scene of 7 frames or more"):
    flicker = np.array([0, 255] * 8, np.uint8)[:, None, None, None] * np.ones((1, 8, 8, 3), np.uint8)
    clips.cut_clips(flicker, clip, "flicker.mp4", "flicker")

