"""The training loop end to end: kill and resume, non-finite stops, other meshes, two processes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import tiny_config
from vidjax.convert import common
from vidjax.errors import ConfigError
from vidjax.train import loop, toy, vae_stage
from vidjax.train.checkpoint import Checkpointer, load_params

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 10


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """Toy shards and tokenizer shared by every run in this module."""
  folder = tmp_path_factory.mktemp("data")
  config = tiny_config.tiny_config(**{"data.data_dir": str(folder / "shards"), "data.tokenizer_dir": str(folder / "tok")})
  toy.ensure_data(config, str(folder))
  return {"data.data_dir": str(folder / "shards"), "data.tokenizer_dir": str(folder / "tok")}


def _command(workdir, data, *extra):
  overrides = {**data, "train.num_steps": STEPS, "log.data_trace": True}
  return [sys.executable, "-m", "vidjax.cli", "train", "--config", os.path.join(ROOT, "tests/train/tiny_config.py"),
          "--workdir", str(workdir), *[f"--config.{k}={v}" for k, v in overrides.items()], *extra]


def _trace(workdir) -> dict[int, str]:
  """step -> batch fingerprint; a resumed run re-appends the steps it redid (the last entry wins)."""
  with open(os.path.join(workdir, "data_trace.process0.jsonl")) as f:
    return {row["step"]: row["sha256"] for row in map(json.loads, f)}


def _kill_when(process, ready, timeout=300.0) -> bool:
  """SIGKILLs `process` once `ready()` holds; False if it finished first."""
  deadline = time.monotonic() + timeout
  while process.poll() is None and time.monotonic() < deadline:
    if ready():
      process.send_signal(signal.SIGKILL)
      process.wait()
      return True
    time.sleep(0.02)
  process.wait()
  return False


def _unfinished_save(checkpoints) -> bool:
  """A step directory exists whose commit marker is not written yet: a save is in progress."""
  if not os.path.isdir(checkpoints):
    return False
  return any(name.isdigit() and not os.path.exists(os.path.join(checkpoints, name, "commit_success.txt"))
             for name in os.listdir(checkpoints))


def test_killed_runs_resume_to_the_bitwise_same_params_on_the_same_data(tmp_path, data):
  reference, resumed = tmp_path / "reference", tmp_path / "resumed"
  assert subprocess.run(_command(reference, data), capture_output=True).returncode == 0
  rng = random.Random(0)
  traced_steps = lambda: os.path.exists(resumed / "data_trace.process0.jsonl") and len(_trace(resumed))
  kills = [
      lambda: _unfinished_save(resumed / "checkpoints"),  # in the middle of writing a checkpoint
      lambda: (traced_steps() or 0) >= 5 and rng.random() < 0.05,  # mid-training
      lambda t0=time.monotonic(), wait=rng.uniform(1, 8): time.monotonic() - t0 > wait,  # anywhere, even start-up
  ]
  killed = 0
  for ready in kills:
    process = subprocess.Popen(_command(resumed, data), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed += _kill_when(process, ready)
  assert killed >= 2, "the runs finished before they could be killed"
  assert subprocess.run(_command(resumed, data), capture_output=True).returncode == 0

  assert _trace(resumed) == _trace(reference) and len(_trace(reference)) == STEPS
  final_ref = common.flatten(load_params(reference / "checkpoints"))
  final_resumed = common.flatten(load_params(resumed / "checkpoints"))
  assert final_ref.keys() == final_resumed.keys()
  assert all(np.array_equal(final_ref[p], final_resumed[p]) for p in final_ref)


class _NanAtStep3(loop.Loader):
  """The batch of step 3 has NaN frames."""

  def __next__(self):
    batch = super().__next__()
    self.served = getattr(self, "served", 0) + 1
    if self.served == 4:
      batch["frames"] = np.full_like(batch["frames"], np.nan)
    return batch


def test_a_nan_batch_stops_with_a_message_and_the_checkpoint_stays_loadable(tmp_path, data, monkeypatch):
  config = tiny_config.tiny_config(**data, **{"train.num_steps": 6})
  monkeypatch.setattr(loop, "Loader", _NanAtStep3)
  with pytest.raises(ConfigError, match=r"training step 4.*not finite.*step 2\) is intact"):
    loop.train_and_evaluate(config, str(tmp_path))
  assert Checkpointer(tmp_path / "checkpoints").latest_step() == 2
  params = load_params(tmp_path / "checkpoints")
  assert all(np.isfinite(v).all() for v in common.flatten(params).values())


def test_a_checkpoint_from_mesh_4x2_continues_on_8x1_and_on_one_device(tmp_path, data):
  for steps, mesh, devices in ((2, dict(data=4, fsdp=2), 0), (4, dict(data=8, fsdp=1), 0), (6, dict(data=1), 1)):
    config = tiny_config.tiny_config(**data, **{"train.num_steps": steps, "mesh.num_devices": devices})
    config.mesh.shape = mesh
    summary = loop.train_and_evaluate(config, str(tmp_path))
    assert summary["step"] == steps and np.isfinite(summary["last_smoothed_loss"])
  assert Checkpointer(tmp_path / "checkpoints").finished_steps()[-3:] == [2, 4, 6]


def test_two_processes_on_localhost_train_and_agree_on_the_loss(tmp_path, data):
  command = [sys.executable, "-m", "launch.local", "--num_processes", "2", "--",
             *_command(tmp_path, data, "--config.train.num_steps=2", "--config.data.batch_size=4")[3:]]
  result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
  finals = [line.rsplit("->", 1)[1] for line in result.stdout.splitlines() if "smoothed loss" in line and "->" in line]
  assert len(finals) == 2 and finals[0] == finals[1], result.stdout[-2000:]


def test_a_decoder_stage_keeps_the_encoder_of_the_last_init_from_source_and_trains_a_wider_decoder(tmp_path, data):
  def stage(workdir, **overrides):
    config = tiny_config.tiny_config(**data, **{"vae_stage.num_steps": 2, "vae_stage.batch_size": 2}, **overrides)
    directory = vae_stage.train_vae(config, loop.build_model(config).vae, str(workdir))
    return directory, common.flatten(load_params(directory)["vae"])

  first, _ = stage(tmp_path / "a", seed=1)
  second, source = stage(tmp_path / "b", seed=2)
  decoder_only = {"vae_stage.trainable": ("vae/decoder/.*", "vae/post_quant_conv/.*"),
                  "model.vae.decoder_block_out_channels": (8, 16)}
  _, tuned = stage(tmp_path / "c", **{"vae_stage.init_from": f"{first},{second}"}, **decoder_only)

  for path, value in tuned.items():
    if path[0] in ("encoder", "quant_conv"):  # frozen: the later source's, bit for bit
      np.testing.assert_array_equal(value, source[path], err_msg="/".join(path))
  assert tuned[("decoder", "conv_in", "kernel")].shape == (3, 3, 4, 16)  # wider: from its init
  changed = tuned[("post_quant_conv", "kernel")] - source[("post_quant_conv", "kernel")]
  assert np.abs(changed).max() > 0  # same shape, trainable: copied, then trained

  with pytest.raises(ConfigError, match="frozen VAE params"):  # a reshaped encoder would never train
    stage(tmp_path / "d", **{"vae_stage.init_from": second, "model.vae.block_out_channels": (8, 12)}, **decoder_only)


def test_an_exported_run_loads_for_editing_with_its_sampling_defaults(tmp_path, data, capsys):
  from vidjax.cli import convert
  from vidjax.pipelines.model_dir import SAMPLING_DEFAULTS, load_model_dir

  workdir, out = tmp_path / "run", tmp_path / "export"
  loop.train_and_evaluate(tiny_config.tiny_config(**data, **{"train.num_steps": 2}), str(workdir))
  assert convert(["run", str(workdir), str(out), "--sampling-default", "cfg=2"]) == 2  # an unknown name
  assert "unknown sampling defaults ['cfg']" in capsys.readouterr().err and not out.exists()

  assert convert(["run", str(workdir), str(out), "--dtype", "float16", "--sampling-default", "guidance_scale=2",
                  "--sampling-default", "num_inference_steps=3"]) == 0
  model_dir = load_model_dir(out)
  assert model_dir.sampling_defaults == {**SAMPLING_DEFAULTS, "guidance_scale": 2.0, "num_inference_steps": 3}
  assert model_dir.manifest["source"]["step"] == 2 and model_dir.video["num_frames"] == 4
  exported = common.flatten(model_dir.params["unet"])
  trained = common.flatten(load_params(workdir / "checkpoints", use_ema=True)["unet"])
  assert exported.keys() == trained.keys()
  for path, value in exported.items():
    assert value.dtype == np.float16
    np.testing.assert_allclose(value, trained[path], rtol=1e-3, atol=1e-4, err_msg="/".join(path))
