"""The vidjax checkpoint directory: round trip, manifest, atomic writes and clear errors."""

from __future__ import annotations

import json
import pathlib
import shutil

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import vidjax
from vidjax.convert import common, pretrained
from vidjax.errors import ConfigError, InputError, usual_mode
from vidjax.models.clip import CLIPTextConfig
from vidjax.models.dpt_backbone import BitConfig, DPTConfig
from vidjax.models.prior import PriorConfig
from vidjax.models.unet import UNetConfig
from vidjax.models.vae import VAEConfig

UNET = UNetConfig(in_channels=5, block_out_channels=(8, 16), layers_per_block=1, attention_levels=(True, False),
                  num_attention_heads=(2, 2), cross_attention_dim=12, norm_num_groups=4, temporal_conv="pseudo3d",
                  temporal_attention=True, temporal_relative_position=4, temporal_causal=True, param_dtype="bfloat16")
VAE = VAEConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4)
TEXT = CLIPTextConfig(vocab_size=30, hidden_size=12, intermediate_size=20, num_attention_heads=2, num_hidden_layers=1,
                      max_position_embeddings=7, hidden_act="gelu", projection_dim=None, eos_token_id=29)
DPT = DPTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20, image_size=(32, 32),
                backbone_out_indices=(0, 1), reassemble_factors=(1, 0.5), neck_hidden_sizes=(8, 12),
                fusion_hidden_size=8,
                bit=BitConfig(embedding_size=8, hidden_sizes=(8, 16), depths=(1, 1), num_groups=4))
# Gen-1's prior (DiffusionPrior's params), with fields away from their defaults so that each must come back.
PRIOR = PriorConfig(embed_dim=7, text_width=12, max_text_tokens=7, width=12, depth=2, heads=3, ff_mult=2,
                    num_train_timesteps=100, beta_schedule="linear", text_drop_prob=0.2)
EXTRA = {"scheduler": {"beta_schedule": "scaled_linear", "prediction_type": "epsilon", "steps_offset": 1},
         "conditioning": {"structure": "depth_1ch", "content": "text_tokens"}}


def _random_params(config, seed: int) -> dict:
  """Random values in the param tree's shapes and dtypes (bfloat16 kept), so a swapped tensor shows."""
  rng = np.random.default_rng(seed)
  flat = common.flatten(pretrained.param_shapes(config))
  return common.unflatten({p: rng.standard_normal(s.shape).astype(s.dtype) for p, s in flat.items()})


@pytest.fixture(scope="module")
def components():
  return {"unet": (UNET, _random_params(UNET, 0)), "vae": (VAE, _random_params(VAE, 1)),
          "text_encoder": (TEXT, _random_params(TEXT, 2)), "depth_estimator": (DPT, _random_params(DPT, 3)),
          "prior": (PRIOR, _random_params(PRIOR, 4))}


@pytest.fixture
def saved(tmp_path, components):
  (tmp_path / "tok").mkdir()
  (tmp_path / "tok" / "vocab.json").write_text("{}")
  return pretrained.save_pretrained(tmp_path / "ckpt", components, extra=EXTRA, assets={"tokenizer": tmp_path / "tok"})


def test_round_trip_keeps_configs_values_and_dtypes(saved, components):
  loaded = pretrained.load_pretrained(saved)
  assert list(loaded) == list(components)
  for name, (config, params) in components.items():
    assert loaded[name][0] == config and hash(loaded[name][0]) == hash(config)  # tuples again, hashable for jit
    ours, theirs = common.flatten(loaded[name][1]), common.flatten(params)
    assert ours.keys() == theirs.keys()
    for path, value in theirs.items():
      assert ours[path].dtype == value.dtype
      np.testing.assert_array_equal(ours[path], value)
  assert common.flatten(loaded["unet"][1])[("conv_in", "kernel")].dtype == ml_dtypes.bfloat16
  assert loaded["depth_estimator"][0].bit == DPT.bit


def test_manifest_and_files_are_the_documented_format(saved):
  folder = pathlib.Path(saved)
  manifest = json.loads((folder / "config.json").read_text())
  assert manifest["format"] == "vidjax-pretrained" and manifest["format_version"] == 1
  assert manifest["vidjax_version"] == vidjax.__version__ and manifest["assets"] == ["tokenizer"]
  assert manifest["scheduler"] == EXTRA["scheduler"] and manifest["conditioning"] == EXTRA["conditioning"]
  unet = manifest["components"]["unet"]
  assert unet["class"] == "UNetConfig" and unet["weights"] == "unet.safetensors"
  assert unet["config"]["block_out_channels"] == [8, 16] and unet["config"]["temporal_conv"] == "pseudo3d"
  assert manifest["components"]["depth_estimator"]["config"]["bit"]["class"] == "BitConfig"
  assert sorted(p.name for p in folder.iterdir()) == [
      "config.json", "depth_estimator.safetensors", "prior.safetensors", "text_encoder.safetensors", "tokenizer",
      "unet.safetensors", "vae.safetensors"]
  assert "down_blocks_0/temporal_attentions_0/transformer_blocks_0/attn1/relative_position_k" in load_file(
      folder / "unet.safetensors")
  assert (folder / "tokenizer" / "vocab.json").read_text() == "{}"
  assert pretrained.read_manifest(folder)["conditioning"]["structure"] == "depth_1ch"
  # Readable by others as any file the user writes (safetensors alone creates owner-only files).
  assert {p.name: p.stat().st_mode & 0o777 for p in folder.glob("*.safetensors")} == {
      p.name: usual_mode() for p in folder.glob("*.safetensors")}
  assert folder.stat().st_mode & 0o777 == usual_mode(is_dir=True)


def test_load_a_subset(saved):
  loaded = pretrained.load_pretrained(saved, ("vae",))
  assert list(loaded) == ["vae"] and loaded["vae"][0] == VAE
  with pytest.raises(ConfigError, match="has no components \\['image_encoder'\\]"):
    pretrained.load_pretrained(saved, ("image_encoder",))


def test_failed_save_leaves_no_directory_and_keeps_an_old_one(tmp_path, components, saved):
  with pytest.raises(InputError, match="tokenizer folder does not exist"):
    pretrained.save_pretrained(tmp_path / "new", components, assets={"tokenizer": tmp_path / "absent"})
  with pytest.raises(InputError):
    pretrained.save_pretrained(saved, components, assets={"tokenizer": tmp_path / "absent"})
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "tok"]  # no 'new', no temporary siblings
  assert pretrained.load_pretrained(saved, ("vae",))["vae"][0] == VAE  # the old checkpoint is intact
  with pytest.raises(ValueError, match="must not use"):
    pretrained.save_pretrained(tmp_path / "bad", components, extra={"components": {}})


def _edit_manifest(folder, edit) -> None:
  path = folder / "config.json"
  manifest = json.loads(path.read_text())
  edit(manifest)
  path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage, error, message", [
    ("no_dir", InputError, "does not exist"),
    ("no_manifest", InputError, "file not found"),
    ("bad_json", InputError, "not valid JSON"),
    ("not_vidjax", InputError, "is not a vidjax-pretrained manifest"),
    ("newer_format", ConfigError, "format_version 2 is newer"),
    ("unknown_field", ConfigError, "UNetConfig has no fields \\['frobnicate'\\]"),
    ("unknown_class", ConfigError, "no known 'class'"),
    ("no_weights", InputError, "the unet weights file is missing"),
    ("corrupt_weights", InputError, "not a readable safetensors file"),
    ("wrong_shape", ConfigError, "conv_in/kernel \\(3, 3, 5, 7\\) != \\(3, 3, 5, 8\\)"),
    ("missing_param", ConfigError, "missing conv_out/bias"),
])
def test_load_errors_name_the_problem(tmp_path, saved, damage, error, message):
  folder = pathlib.Path(saved)
  weights = folder / "unet.safetensors"
  if damage == "no_dir":
    shutil.rmtree(folder)
  elif damage == "no_manifest":
    (folder / "config.json").unlink()
  elif damage == "bad_json":
    (folder / "config.json").write_text("{not json")
  elif damage == "not_vidjax":
    _edit_manifest(folder, lambda m: m.update(format="diffusers"))
  elif damage == "newer_format":
    _edit_manifest(folder, lambda m: m.update(format_version=2))
  elif damage == "unknown_field":
    _edit_manifest(folder, lambda m: m["components"]["unet"]["config"].update(frobnicate=1))
  elif damage == "unknown_class":
    _edit_manifest(folder, lambda m: m["components"]["unet"].update({"class": "GPT"}))
  elif damage == "no_weights":
    weights.unlink()
  elif damage == "corrupt_weights":
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
  else:
    flat = load_file(weights)
    if damage == "wrong_shape":
      flat["conv_in/kernel"] = flat["conv_in/kernel"][..., :7]
    else:
      del flat["conv_out/bias"]
    save_file(flat, weights)
  with pytest.raises(error, match=message):
    pretrained.load_pretrained(folder, ("unet",))
