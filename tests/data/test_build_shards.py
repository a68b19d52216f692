"""The shard builder: toy, folder and TFDS sources, bad items, resume, workers, latents."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from data_fakes import build_toy_shards, folder_args, make_video_folder, toy_frames, write_depth, write_video

from data_pipelines import build_shards
from vidjax.data.sources import ClipSpec, ToySource
from vidjax.data import loader
from vidjax.data import records
from vidjax.errors import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL
from vidjax.toyworld import render_clip, save_tokenizer


class VidjaxTestVideos(tfds.core.GeneratorBasedBuilder):
  """A TFDS video classification builder without TensorFlow (ucf101's `Video` feature needs TF).

  Only its features matter: `tfds.testing.mock_data` fills it with random examples.
  """

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "video": tfds.features.Tensor(shape=(None, 24, 32, 3), dtype=np.uint8),
        "label": tfds.features.ClassLabel(names=["ApplyEyeMakeup", "YoYo", "playing_guitar"]),
    }))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    raise NotImplementedError("examples come from tfds.testing.mock_data")


def shard_mtimes(folder) -> dict[str, int]:
  return {name: os.stat(os.path.join(folder, name)).st_mtime_ns
          for name in sorted(os.listdir(folder)) if name.endswith(".array_record")}


def test_toy_shards_hold_the_rendered_clips(tmp_path):
  assert build_toy_shards(tmp_path, 7, examples_per_shard=3, extra=("--with_masks",)) == EXIT_OK
  source = records.ExampleSource(tmp_path)
  manifest = source.manifest
  assert [s.num_examples for s in manifest.shards] == [3, 3, 1] and len(source) == 7
  assert manifest.fields["frames"] == records.FieldSpec((4, 16, 16, 3), "uint8")
  assert manifest.fields["masks"] == records.FieldSpec((4, 16, 16), "uint8")
  assert (manifest.num_frames, manifest.stride, manifest.depth_method) == (4, 2, "toy")
  item = ToySource(7, 0).items()[4]
  clip = render_clip(item.ref, num_frames=4, height=16, width=16, stride=2)
  example = source[4]
  assert example["key"] == item.key and example["caption"] == clip.caption
  np.testing.assert_array_equal(example["frames"], clip.rgb)
  np.testing.assert_array_equal(example["depth"], clip.disparity.astype(np.float16))
  np.testing.assert_array_equal(example["masks"] > 0, clip.masks.any(axis=1))
  assert os.path.getsize(tmp_path / records.SKIPPED_NAME) == 0


def test_rerun_skips_finished_shards(tmp_path, capsys):
  assert build_toy_shards(tmp_path, 7, examples_per_shard=3) == EXIT_OK
  before = shard_mtimes(tmp_path)
  capsys.readouterr()
  assert build_toy_shards(tmp_path, 7, examples_per_shard=3) == EXIT_OK
  assert capsys.readouterr().out.count("finished earlier, skipped") == 3
  assert shard_mtimes(tmp_path) == before
  assert build_toy_shards(tmp_path, 8, examples_per_shard=3) == EXIT_ERROR  # other items


def test_killed_run_leaves_no_partial_shard_and_resumes(tmp_path, monkeypatch):
  original = ToySource.load

  def dies_on_item_4(self, item, clip):
    if item.key.endswith("000004"):
      raise KeyboardInterrupt
    return original(self, item, clip)

  monkeypatch.setattr(ToySource, "load", dies_on_item_4)
  with pytest.raises(KeyboardInterrupt):  # the local builder, in this process (Beam's kill test: test_beam_shards.py)
    build_toy_shards(tmp_path, 7, examples_per_shard=3, extra=("--runner", "local"))
  assert sorted(os.listdir(tmp_path)) == ["done", "shard-00000-of-00003.array_record"]
  first = shard_mtimes(tmp_path)
  # What a SIGKILL leaves behind: a temporary file, never a file under a shard's name.
  (tmp_path / ".shard-00001-of-00003.tmp-x1y2.array_record").write_bytes(b"partial")
  monkeypatch.setattr(ToySource, "load", original)
  assert build_toy_shards(tmp_path, 7, examples_per_shard=3) == EXIT_OK
  assert not any(".tmp-" in name for name in os.listdir(tmp_path))
  assert shard_mtimes(tmp_path)["shard-00000-of-00003.array_record"] == first[
      "shard-00000-of-00003.array_record"]
  assert records.read_manifest(tmp_path).num_examples == 7


def test_bad_videos_are_skipped_with_reasons(tmp_path, capsys):
  root, out = tmp_path / "videos", tmp_path / "shards"
  make_video_folder(root)
  for key in ("good", "clips/good2", "one_frame", "truncated", "empty", "notes"):
    write_depth(root / "depth", key, (4, 16, 24))
  assert build_shards.main(folder_args(root, out, "--examples_per_shard", "4")) == EXIT_PARTIAL
  with open(out / records.SKIPPED_NAME) as f:
    skipped = {json.loads(line)["key"]: json.loads(line) for line in f}
  assert sorted(skipped) == ["empty", "notes", "one_frame", "truncated"]
  assert all(s["reason"] and s["source"].endswith(k + ".mp4") for k, s in skipped.items())
  assert "too short: 1 frames" in skipped["one_frame"]["reason"]
  err = capsys.readouterr().err
  assert all(f"skipped {skipped[k]['source']}: " in err for k in skipped)
  source = records.ExampleSource(out)
  assert sorted(source[i]["key"] for i in range(len(source))) == ["clips/good2", "good"]
  assert {source[i]["caption"] for i in range(2)} == {"video good.mp4", "video clips/good2.mp4"}
  assert source[0]["frames"].shape == (4, 16, 24, 3)
  np.testing.assert_allclose(source[0]["depth"][0, 0], np.linspace(0, 1, 24), atol=1e-3)
  before = shard_mtimes(out)
  assert build_shards.main(folder_args(root, out, "--examples_per_shard", "4")) == EXIT_PARTIAL
  assert shard_mtimes(out) == before


def test_small_sources_are_upscaled_with_a_warning_or_skipped_below_min_source_side(tmp_path, capsys):
  root = tmp_path / "videos"
  root.mkdir()
  write_video(root / "tiny.mp4", toy_frames(1, 10, size=8))  # 8x8: under the default --min_source_side 16
  write_video(root / "strip.mp4", np.tile(toy_frames(2, 10, size=16), (1, 1, 32, 1)))  # 512x16: a 16x16 crop
  write_video(root / "large.mp4", toy_frames(3, 10, size=80))  # scaled down: nothing to say
  (root / "captions.csv").write_text("path,caption\ntiny.mp4,a\nstrip.mp4,b\nlarge.mp4,c\n")
  for key in ("tiny", "strip", "large"):
    write_depth(root / "depth", key, (4, 64, 64))

  def build(out, *extra):
    return build_shards.main(["--source", "folder", "--captions", str(root / "captions.csv"), "--output_dir",
                              str(out), "--num_frames", "4", "--stride", "2", "--height", "64", "--width", "64",
                              "--depth", "folder", "--depth_dir", str(root / "depth"), *extra])

  out = tmp_path / "shards"
  assert build(out) == EXIT_PARTIAL
  skipped = [json.loads(line) for line in (out / records.SKIPPED_NAME).read_text().splitlines()]
  assert [s["key"] for s in skipped] == ["tiny"]
  assert "8x8" in skipped[0]["reason"] and "--min_source_side 16" in skipped[0]["reason"]
  warned = [json.loads(line) for line in (out / build_shards.WARNINGS_NAME).read_text().splitlines()]
  assert [w["key"] for w in warned] == ["strip"] and warned[0]["source"].endswith("strip.mp4")
  assert "upscaled x4" in warned[0]["warning"] and "16x16 centre crop of 512x16" in warned[0]["warning"]
  err = capsys.readouterr().err
  assert f"warning: {warned[0]['source']}: upscaled x4" in err and f"skipped {skipped[0]['source']}: " in err
  assert sorted(records.ExampleSource(out)[i]["key"] for i in range(2)) == ["large", "strip"]
  assert build(out) == EXIT_PARTIAL and "upscaled x4" in capsys.readouterr().err  # a resumed build still says it

  # --min_source_side 0 takes every size: the 8x8 video too, upscaled x8 with its warning.
  assert build(tmp_path / "all", "--min_source_side", "0") == EXIT_OK
  warned = (tmp_path / "all" / build_shards.WARNINGS_NAME).read_text()
  assert "upscaled x8" in warned and len(warned.splitlines()) == 2


def test_nothing_written_and_wrong_arguments_exit_2(tmp_path, capsys):
  root = tmp_path / "videos"
  make_video_folder(root)
  (root / "depth").mkdir()  # no maps at all: every item is skipped
  assert build_shards.main(folder_args(root, tmp_path / "out")) == EXIT_ERROR
  assert not os.path.exists(tmp_path / "out" / records.MANIFEST_NAME)
  assert len((tmp_path / "out" / records.SKIPPED_NAME).read_text().splitlines()) == 6
  assert build_shards.main(["--source", "folder", "--output_dir", str(tmp_path)]) == EXIT_ERROR
  assert build_shards.main(folder_args(root, tmp_path / "d", "--depth", "toy")) == EXIT_ERROR
  assert "toy ground truth needs --source toy" in capsys.readouterr().err
  assert build_shards.main(["--source", "tfds", "--tfds_name", "x", "--output_dir",
                            str(tmp_path / "e"), "--depth", "dpt"]) == EXIT_ERROR
  assert "--depth_weights (not given): depth method 'dpt' needs local DPT/MiDaS weights" in (
      capsys.readouterr().err)
  assert build_shards.main(["--source", "toy", "--output_dir", str(tmp_path), "--stride",
                            "0"]) == EXIT_ERROR
  (root / "captions.csv").write_text("path,caption\ngood.mp4,one\ngood.avi,two\n")
  assert build_shards.main(folder_args(root, tmp_path / "dup")) == EXIT_ERROR
  assert "share the key 'good'" in capsys.readouterr().err


def test_shared_videos_build_and_load(tmp_path, shared_video):
  root = tmp_path / "videos"
  root.mkdir()
  for name in ("box.mp4", "tree.avi"):
    shutil.copy(shared_video(name), root / name)
    write_depth(root / "depth", os.path.splitext(name)[0], (4, 32, 48))
  (root / "captions.jsonl").write_text(
      '{"path": "box.mp4", "caption": "a box"}\n{"path": "tree.avi", "caption": "a tree"}\n')
  assert build_shards.main([
      "--source", "folder", "--captions", str(root / "captions.jsonl"), "--output_dir",
      str(tmp_path / "shards"), "--num_frames", "4", "--stride", "4", "--height", "32",
      "--width", "48", "--depth", "folder", "--depth_dir", str(root / "depth")]) == EXIT_OK
  config = loader.default_loader_config()
  config.data_dir, config.batch_size, config.image_fraction = str(tmp_path / "shards"), 2, 0.0
  config.tokenizer_dir = save_tokenizer(tmp_path / "tokenizer")
  batch = next(loader.Loader(config, process_index=0, process_count=1))
  manifest = records.read_manifest(config.data_dir)
  assert batch["frames"].shape == (2,) + manifest.fields["frames"].shape == (2, 4, 32, 48, 3)
  assert batch["depth"].shape == (2, 4, 32, 48, 1)
  assert batch["frames"].std() > 0.05  # real pixels, not a blank decode


def test_tfds_source_with_mock_data(tmp_path):
  depth_dir = tmp_path / "depth"
  for index in range(6):
    write_depth(depth_dir, f"vidjax_test_videos/train/{index}", (4, 16, 16))
  with tfds.testing.mock_data(num_examples=6):
    status = build_shards.main([
        "--source", "tfds", "--tfds_name", "vidjax_test_videos", "--split", "train",
        "--output_dir", str(tmp_path / "shards"), "--num_frames", "4", "--stride", "4",
        "--height", "16", "--width", "16", "--depth", "folder", "--depth_dir", str(depth_dir)])
  source = records.ExampleSource(tmp_path / "shards")
  skipped = (tmp_path / "shards" / records.SKIPPED_NAME).read_text().splitlines()
  assert len(source) + len(skipped) == 6 and len(source) >= 3
  assert status == (EXIT_PARTIAL if skipped else EXIT_OK)
  assert all("too short" in json.loads(line)["reason"] for line in skipped)
  captions = {source[i]["caption"] for i in range(len(source))}
  assert captions <= {"apply eye makeup", "yo yo", "playing guitar"}
  assert source[0]["frames"].shape == (4, 16, 16, 3) and source[0]["key"].startswith(
      "vidjax_test_videos/train/")


def fake_vae_encode(frames: np.ndarray) -> np.ndarray:
  """(T, H, W, 3) uint8 -> (T, H/4, W/4, 4): 4x4 mean pooling plus a constant channel."""
  t, h, w, _ = frames.shape
  pooled = frames.reshape(t, h // 4, 4, w // 4, 4, 3).mean(axis=(2, 4)) / 255.0
  return np.concatenate([pooled, np.ones((t, h // 4, w // 4, 1))], axis=-1)


def test_cached_latents_reach_the_loader(tmp_path):
  spec = build_shards.BuildSpec(
      source=ToySource(4, 0), clip=ClipSpec(4, 2, 16, 16), output_dir=str(tmp_path / "shards"),
      depth_method="toy", examples_per_shard=4, encode_fn=fake_vae_encode)
  report = build_shards.build_shards(spec)
  assert report.exit_status == EXIT_OK
  manifest = records.read_manifest(report.manifest_path.rsplit("/", 1)[0])
  assert manifest.fields["latents"] == records.FieldSpec((4, 4, 4, 4), "float16")
  config = loader.default_loader_config()
  config.data_dir, config.batch_size, config.use_latents = spec.output_dir, 2, True
  config.image_fraction = 0.0
  config.tokenizer_dir = save_tokenizer(tmp_path / "tokenizer")
  batch = next(loader.Loader(config, process_index=0, process_count=1))
  assert "frames" not in batch and batch["latents"].shape == (2, 4, 4, 4, 4)
  np.testing.assert_array_equal(batch["latents"][..., 3], 1.0)


def test_worker_processes_write_the_same_shards(tmp_path):
  assert build_toy_shards(tmp_path / "one", 6, examples_per_shard=2) == EXIT_OK
  assert build_toy_shards(tmp_path / "two", 6, examples_per_shard=2,
                          extra=("--num_workers", "2")) == EXIT_OK
  one, two = records.ExampleSource(tmp_path / "one"), records.ExampleSource(tmp_path / "two")
  assert one.manifest == two.manifest
  for i in range(6):
    np.testing.assert_array_equal(one[i]["frames"], two[i]["frames"])
    np.testing.assert_array_equal(one[i]["depth"], two[i]["depth"])


@pytest.mark.slow  # ~15 s: imports torch and compiles a DPT
def test_dpt_depth_from_local_weights(tmp_path):
  """`--depth dpt` runs vidjax.models.depth on a tiny randomly initialised transformers DPT."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  config = transformers.DPTConfig(
      hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=17,
      backbone_out_indices=[0, 1, 2, 3], fusion_hidden_size=8, image_size=32, patch_size=8,
      neck_hidden_sizes=[4, 6, 8, 10], reassemble_factors=[4, 2, 1, 0.5])
  torch.manual_seed(0)
  model = transformers.DPTForDepthEstimation(config)
  with torch.no_grad():  # default init gives a nearly flat map, which would prove nothing
    for parameter in model.parameters():
      parameter.add_(0.1 * torch.randn_like(parameter))
    model.head.head[4].bias.add_(1.0)  # keep the final ReLU open
  model.save_pretrained(tmp_path / "dpt")
  assert build_toy_shards(tmp_path / "shards", 2, size=32, extra=(
      "--depth", "dpt", "--depth_weights", str(tmp_path / "dpt"))) == EXIT_OK
  source = records.ExampleSource(tmp_path / "shards")
  assert source.manifest.depth_method == "dpt"
  depth = source[0]["depth"].astype(np.float32)
  assert depth.shape == (4, 32, 32) and depth.min() == 0.0 and depth.max() == 1.0
