"""`vidjax evaluate` on the video protocols (folder, ucf101) with a narrow random I3D: sharding, bad input, weights.

I3D here: channels / 8 and 5 classes (so 5 readable videos per set make a stable FVD), 9 frames at 193 x 193.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import flax.linen as nn
import ml_collections
import numpy as np
import pytest

import tiny_model_dir
from vidjax import cli
from vidjax.convert import pretrained
from vidjax.data.video_io import write_video
from vidjax.errors import EXIT_ERROR, EXIT_PARTIAL, InputError
from vidjax.eval import job
from vidjax.models import clip, i3d
from vidjax.pipelines import eval_protocols

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
FOLDER = os.path.join(ROOT, "configs", "eval", "folder.py")
I3D = i3d.I3DConfig(num_classes=5, channel_divisor=8)


def _clip(rng, shift: float, frames: int = 10) -> np.ndarray:
  """A smooth moving pattern (24 x 32), its brightness offset by `shift`: one distribution per shift."""
  t, y, x = np.meshgrid(np.arange(frames), np.arange(24), np.arange(32), indexing="ij")
  phase = rng.uniform(0, 2 * np.pi, size=3)
  rgb = [np.sin(x / (4 + i) + t * 0.3 + phase[i]) + np.cos(y / 5 - t * 0.2) for i in range(3)]
  return np.clip(np.stack(rgb, -1) * 50 + 110 + shift, 0, 255).astype(np.uint8)


def _folders(tmp_path, bad: bool = True, reference_count: int = 6):
  rng = np.random.default_rng(0)
  gen, ref = tmp_path / "generated", tmp_path / "reference"
  for i in range(6):
    write_video(gen / f"sub/g{i}.mp4", _clip(rng, 40.0))
  for i in range(reference_count):
    write_video(ref / f"r{i}.mp4", _clip(rng, 0.0))
  if bad:  # the kinds tests/data/test_build_shards.py makes
    full = open(write_video(gen / "truncated.mp4", _clip(rng, 40.0)), "rb").read()
    (gen / "truncated.mp4").write_bytes(full[:len(full) // 2])
    (gen / "empty.mp4").write_bytes(b"")
    (gen / "notes.mp4").write_text("this is a text file, not a video\n")
  return gen, ref


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  """A tiny converted CLIP image tower (with a projection), as `vidjax convert clip` writes one."""
  config = clip.CLIPVisionConfig(hidden_size=24, intermediate_size=37, num_attention_heads=4, num_hidden_layers=1,
                                 image_size=30, patch_size=6, projection_dim=11)
  params = nn.unbox(clip.CLIPVisionTransformer(config).init(jax.random.key(0), np.zeros((1, 30, 30, 3))))["params"]
  return pretrained.save_pretrained(tmp_path_factory.mktemp("w") / "clip", {"image_encoder": (config, params)})


@pytest.fixture(scope="module")
def i3d_dir(tmp_path_factory):
  return pretrained.save_pretrained(tmp_path_factory.mktemp("w") / "i3d", {"i3d": (I3D, i3d.init_params(I3D, seed=1))})


def _args(workdir, gen, ref, weights, *extra):
  return ["evaluate", "--config", FOLDER, "--workdir", str(workdir), f"--config.generated_dir={gen}",
          f"--config.reference_dir={ref}", f"--config.i3d_dir={weights}", "--config.num_frames=9",
          f"--config.i3d_size={i3d.MIN_SIZE}", "--config.batch_size=8", "--config.kvd_subsets=5", *extra]


def _check_results(results: dict, with_clip: bool = False) -> None:
  expected = ["fvd", "kvd"] + (["clip_frame_consistency"] if with_clip else [])
  assert [f["metric"] for f in results["figures"]] == expected
  assert [f["count"] for f in results["figures"]] == [6] * len(expected)  # the 6 readable generated videos
  if with_clip:
    assert 0.5 < results["figures"][2]["value"] < 1.0  # smooth motion: similar, not equal, frames
  assert sorted(os.path.basename(s["source"]) for s in results["skipped"].values()) == ["empty.mp4", "notes.mp4",
                                                                                         "truncated.mp4"]
  assert all(s["reason"] for s in results["skipped"].values())
  assert results["figures"][0]["value"] > 0.0  # the sets differ (brightness)


def test_folder_protocol_skips_bad_videos_and_resumes(tmp_path, i3d_dir, clip_dir, capsys):
  gen, ref = _folders(tmp_path)
  args = _args(tmp_path / "run", gen, ref, i3d_dir, f"--config.clip_dir={clip_dir}")
  assert cli.main(args) == EXIT_PARTIAL
  captured = capsys.readouterr()
  for name in ("truncated.mp4", "empty.mp4", "notes.mp4"):
    assert f"skipped {gen / name}: " in captured.err
  assert "(12 computed" in captured.out
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  _check_results(results, with_clip=True)
  assert len(os.listdir(tmp_path / "run" / "features")) == 12  # skipped items are not cached
  page = (tmp_path / "run" / "index.html").read_text()
  assert "fvd" in page and page.count("<video src=") == 6 and "clip_frame_consistency" in page
  # A restart recomputes no cached item and reports the same figures.
  assert cli.main(args) == EXIT_PARTIAL
  assert "(0 computed" in capsys.readouterr().out
  assert json.loads((tmp_path / "run" / "results.json").read_text())["figures"] == results["figures"]


@pytest.mark.slow
def test_folder_protocol_on_eight_devices_equals_one(tmp_path, i3d_dir):
  """The job-level check (the fast variant: test_metrics' sharded features on 8 devices against 1)."""
  gen, ref = _folders(tmp_path)
  assert len(jax.local_devices()) == 8
  for n in (1, 0):
    assert cli.main(_args(tmp_path / f"d{n}", gen, ref, i3d_dir, f"--config.num_devices={n}")) == EXIT_PARTIAL
  one, eight = (json.loads((tmp_path / f"d{n}" / "results.json").read_text()) for n in (1, 0))
  _check_results(one)
  for a, b in zip(one["figures"], eight["figures"]):
    assert b["value"] == pytest.approx(a["value"], rel=1e-3, abs=1e-3 * abs(one["figures"][0]["value"]))


def test_missing_weights_and_too_few_videos_are_refused_before_work(tmp_path, i3d_dir, capsys):
  gen, ref = _folders(tmp_path, bad=False, reference_count=3)
  assert cli.main(_args(tmp_path / "w1", gen, ref, tmp_path / "absent")) == EXIT_ERROR
  err = capsys.readouterr().err
  assert "config.i3d_dir" in err and "config.json is missing" in err and "vidjax convert i3d" in err
  assert not (tmp_path / "w1").exists()
  assert cli.main(_args(tmp_path / "w2", gen, ref, "")) == EXIT_ERROR
  assert "needs the I3D weights" in capsys.readouterr().err
  assert cli.main(_args(tmp_path / "w3", gen, ref, i3d_dir, f"--config.clip_dir={tmp_path / 'noclip'}")) == EXIT_ERROR
  assert "vidjax convert clip" in capsys.readouterr().err
  assert cli.main(_args(tmp_path / "w4", gen, ref, i3d_dir)) == EXIT_ERROR
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "reference videos: 3 are too few for a stable FVD" in err[0]
  assert "score at least 5 reference videos" in err[0]
  assert not (tmp_path / "w4" / "features").exists()


def test_convert_i3d_command_writes_the_directory_the_job_reads(tmp_path):
  """A PyTorch-layout state dict (our params, renamed back) -> `vidjax convert i3d` -> the same params."""
  from safetensors.numpy import save_file

  params = i3d.init_params(I3D, seed=4)
  state = {}
  for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [p.key for p in path]
    leaf = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}.get(names[-1],
                                                                                                   names[-1])
    value = np.asarray(value)
    value = value.transpose(4, 3, 0, 1, 2) if names[-1] == "kernel" else value
    state[".".join(names[:-1] + [leaf])] = np.ascontiguousarray(value)  # safetensors writes raw memory
  save_file(state, tmp_path / "i3d.safetensors")
  assert cli.main(["convert", "i3d", str(tmp_path / "i3d.safetensors"), str(tmp_path / "out")]) == 0
  config, loaded = pretrained.load_pretrained(tmp_path / "out", ("i3d",))["i3d"]
  assert config == I3D  # classes and width read from the state dict
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(a, b)
  assert cli.main(["convert", "i3d", str(tmp_path / "missing.pt"), str(tmp_path / "out2")]) == EXIT_ERROR


def test_ucf101_protocol_samples_class_prompts_and_scores_generated_against_real(tmp_path, i3d_dir):
  rng = np.random.default_rng(3)
  for name in ("ApplyEyeMakeup", "YoYo"):
    for i in range(4):
      write_video(tmp_path / "UCF-101" / name / f"v_{name}_g01_c0{i}.mp4", _clip(rng, 0.0, frames=20))
  (tmp_path / "UCF-101" / "YoYo" / "v_YoYo_g02_c01.mp4").write_bytes(b"")
  config = ml_collections.ConfigDict(dict(
      protocol="ucf101", i3d_dir=i3d_dir, depth_dir="", real_source="folder", ucf101_dir=str(tmp_path / "UCF-101"),
      num_samples=8, num_frames=9, stride=2, size=24, i3d_size=i3d.MIN_SIZE, fvd_feature="i3d_logits",
      kvd_subsets=3, kvd_subset_size=1000, seed=0, batch_size=4, num_devices=0))
  prompts = []

  def generate(clip, prompt, seed):
    prompts.append((prompt, seed))
    assert clip.shape == (9, 24, 24, 3)
    return np.clip(clip.astype(np.int32) + 30, 0, 255).astype(np.uint8)  # a brighter "generation"

  done = eval_protocols.run_ucf101(config, str(tmp_path / "run"), generate)
  assert len(done["items"]) == 7 and len(done["skipped"]) == 1  # 8 sampled of 9, the empty file skipped
  assert {p for p, _ in prompts} == {"apply eye makeup", "yo yo"}
  assert len({s for _, s in prompts}) == len(prompts)  # one seed per item
  fvd = done["figures"][0]
  assert fvd.metric == "fvd" and fvd.count == 7 and fvd.value > 0.0 and done["figures"][1].metric == "kvd"
  assert eval_protocols.class_prompt("PlayingDaf") == "playing daf"
  assert eval_protocols.sample_keys(list("abcdef"), 3, 0) == eval_protocols.sample_keys(list("abcdef"), 3, 0)
  cached = job.FeatureCache(tmp_path / "run" / "features").load(done["items"][0])
  assert set(cached) == {"i3d_logits", "i3d_pooled", "real_i3d_logits", "real_i3d_pooled"}


def test_ucf101_protocol_reads_a_tfds_builder_and_refuses_an_unprepared_one(tmp_path, i3d_dir):
  tfds = pytest.importorskip("tensorflow_datasets")

  class VidjaxEvalUcfLike(tfds.core.GeneratorBasedBuilder):
    """ucf101's features (video, label with UCF class names); `tfds.testing.mock_data` fills it."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "video": tfds.features.Tensor(shape=(12, 24, 32, 3), dtype=np.uint8),
          "label": tfds.features.ClassLabel(names=["ApplyEyeMakeup", "YoYo"])}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      raise NotImplementedError("examples come from tfds.testing.mock_data")

  config = ml_collections.ConfigDict(dict(
      protocol="ucf101", i3d_dir=i3d_dir, depth_dir="", real_source="tfds", tfds_name="vidjax_eval_ucf_like",
      tfds_data_dir=str(tmp_path / "tfds"), tfds_split="train", num_samples=6, num_frames=9, stride=1, size=24,
      i3d_size=i3d.MIN_SIZE, fvd_feature="i3d_logits", kvd_subsets=3, kvd_subset_size=1000, seed=0, batch_size=8,
      num_devices=0))
  brighter = lambda clip, prompt, seed: np.clip(clip.astype(np.int32) + 30, 0, 255).astype(np.uint8)
  with pytest.raises(InputError, match="cannot be opened.*array_record"):
    eval_protocols.run_ucf101(config, str(tmp_path / "unprepared"), brighter)
  with tfds.testing.mock_data(num_examples=7):
    done = eval_protocols.run_ucf101(config, str(tmp_path / "run"), brighter)
  assert len(done["items"]) == 6 and not done["skipped"] and done["figures"][0].count == 6
  assert all(key.startswith("tfds-") for key in done["items"])
  del VidjaxEvalUcfLike


@pytest.mark.slow  # ~35 s on the shared machine; the fast variant runs run_ucf101 with a stand-in generator
def test_ucf101_command_generates_with_a_checkpoint(tmp_path, i3d_dir, capsys):
  """End to end through `vidjax evaluate`: a tiny random checkpoint generates each sample from its real clip."""
  rng = np.random.default_rng(4)
  for name in ("ApplyEyeMakeup", "YoYo"):
    for i in range(3):
      write_video(tmp_path / "UCF-101" / name / f"v_{name}_g01_c0{i}.mp4", _clip(rng, 0.0, frames=12))
  args = ["evaluate", "--config", os.path.join(ROOT, "configs", "eval", "ucf101_fvd.py"),
          "--workdir", str(tmp_path / "run"), f"--config.i3d_dir={i3d_dir}",
          f"--config.ucf101_dir={tmp_path / 'UCF-101'}", "--config.num_samples=6", "--config.num_frames=9",
          "--config.stride=1", f"--config.size={tiny_model_dir.SIZE}",
          f"--config.i3d_size={i3d.MIN_SIZE}", "--config.num_inference_steps=2", "--config.guidance_scale=1.0",
          "--config.kvd_subsets=3"]
  assert cli.main([*args, f"--config.checkpoint={tmp_path / 'none'}"]) == EXIT_ERROR
  assert "config.checkpoint" in capsys.readouterr().err and not (tmp_path / "run").exists()
  checkpoint = tiny_model_dir.write(tmp_path / "model")
  with pytest.warns(UserWarning):  # the tiny checkpoint has no depth estimator: brightness stands in
    assert cli.main([*args, f"--config.checkpoint={checkpoint}"]) == 0
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert [f["metric"] for f in results["figures"]] == ["fvd", "kvd"] and results["figures"][0]["count"] == 6
  assert results["figures"][0]["value"] > 0.0 and results["checkpoint"] == checkpoint
  assert len(os.listdir(tmp_path / "run" / "videos")) == 6


@pytest.mark.slow  # two fresh processes compile the narrow I3D
def test_folder_protocol_with_two_processes_through_launch_local_gives_the_figures_of_one(tmp_path, i3d_dir):
  gen, ref = _folders(tmp_path)
  assert cli.main(_args(tmp_path / "one", gen, ref, i3d_dir)) == EXIT_PARTIAL
  root = os.path.abspath(ROOT)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
  command = [sys.executable, "-m", "launch.local", "--num_processes", "2", "--devices_per_process", "2", "--",
             *_args(tmp_path / "two", gen, ref, i3d_dir)]
  run = subprocess.run(command, env=env, cwd=root, timeout=900, capture_output=True, text=True)
  assert run.returncode == EXIT_PARTIAL, run.stderr[-2000:]
  one, two = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("one", "two"))
  assert one["items"] == two["items"] and one["skipped"].keys() == two["skipped"].keys()
  for a, b in zip(one["figures"], two["figures"]):
    assert b["value"] == pytest.approx(a["value"], rel=1e-3, abs=1e-3 * abs(one["figures"][0]["value"]))
