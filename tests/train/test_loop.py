"""The training loop end to end in this process: non-finite stops, other meshes, the VAE stage, export.

Killed-and-resumed runs and the two-process run are in test_loop_processes.py. Every in-process run
costs a train-step compile unless the persistent cache holds its program, so the tests share one
trained run (`run`): they export it, or continue copies of it, instead of training their own.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import tiny_config
from vidjax.convert import common
from vidjax.errors import ConfigError
from vidjax.train import loop, vae_stage
from vidjax.train.checkpoint import Checkpointer, load_params


@pytest.fixture(scope="module")
def run(tmp_path_factory, loop_base):
  """The workdir of one 2-step run on the default mesh (all 8 devices on 'data'); tests must not change it."""
  workdir = tmp_path_factory.mktemp("run")
  summary = loop.train_and_evaluate(tiny_config.tiny_config(**loop_base, **{"train.num_steps": 2}), str(workdir))
  assert summary["step"] == 2 and np.isfinite(summary["last_smoothed_loss"])
  return workdir


def _copy(run, tmp_path):
  """A copy of the shared run's workdir for a test that continues it."""
  return shutil.copytree(run, tmp_path / "run")


class _NanInSecondBatch(loop.Loader):
  """The second batch it serves has NaN frames: step 3 (0-based) of a run resumed at step 2."""

  def __next__(self):
    batch = super().__next__()
    self.served = getattr(self, "served", 0) + 1
    if self.served == 2:
      batch["frames"] = np.full_like(batch["frames"], np.nan)
    return batch


def test_a_nan_batch_stops_with_a_message_and_the_checkpoint_stays_loadable(run, tmp_path, loop_base, monkeypatch):
  workdir = _copy(run, tmp_path)
  monkeypatch.setattr(loop, "Loader", _NanInSecondBatch)
  with pytest.raises(ConfigError, match=r"training step 4.*not finite.*step 2\) is intact"):
    loop.train_and_evaluate(tiny_config.tiny_config(**loop_base, **{"train.num_steps": 6}), str(workdir))
  assert Checkpointer(workdir / "checkpoints").latest_step() == 2
  params = load_params(workdir / "checkpoints")
  assert all(np.isfinite(v).all() for v in common.flatten(params).values())


def test_a_checkpoint_from_mesh_8x1_continues_on_4x2_and_on_one_device(run, tmp_path, loop_base):
  # Each restore reshards: replicated on 8 devices -> kernels split over fsdp -> all on one device.
  workdir = _copy(run, tmp_path)
  for steps, mesh, devices in ((4, dict(data=4, fsdp=2), 0), (6, dict(data=1), 1)):
    config = tiny_config.tiny_config(**loop_base, **{"train.num_steps": steps, "mesh.num_devices": devices})
    config.mesh.shape = mesh
    summary = loop.train_and_evaluate(config, str(workdir))
    assert summary["step"] == steps and np.isfinite(summary["last_smoothed_loss"])
  assert Checkpointer(workdir / "checkpoints").finished_steps()[-3:] == [2, 4, 6]


def test_a_decoder_stage_keeps_the_encoder_of_the_last_init_from_source_and_trains_a_wider_decoder(tmp_path, loop_base):
  def stage(workdir, **overrides):
    config = tiny_config.tiny_config(**loop_base, **{"vae_stage.num_steps": 2, "vae_stage.batch_size": 2}, **overrides)
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


def test_an_exported_run_loads_for_editing_with_its_sampling_defaults(run, tmp_path, capsys):
  from vidjax.cli import convert
  from vidjax.pipelines.model_dir import SAMPLING_DEFAULTS, load_model_dir

  workdir, out = run, tmp_path / "export"
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


def test_a_text_model_without_a_tokenizer_is_refused_before_anything_is_written(tmp_path):
  config = tiny_config.tiny_config(**{"data.tokenizer_dir": ""})
  with pytest.raises(ConfigError, match="tokenizer_dir.*caption text"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_image_buckets_the_model_cannot_take_are_refused_before_anything_is_written(tmp_path):
  # The tiny model's size multiple is 4: VAE factor 2 x UNet downsampling 2. Checked before the model
  # is built, which would read the tokenizer.
  config = tiny_config.tiny_config(**{"data.image_buckets": ((16, 16), (16, 18)),
                                      "data.tokenizer_dir": str(tmp_path / "no_tokenizer")})
  with pytest.raises(ConfigError, match=r"data.image_buckets: 16x18 .* size multiple 4 .*e.g. \(16, 20\)"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
