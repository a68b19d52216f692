"""Make-Your-Video .ckpt conversion on a reduced-width fixture of the public checkpoint's keys and shapes.

The fixture (`myv_layout.py`) is written from the layout rules of LVDM's UNet, ldm's VAE and the
OpenCLIP text tower. Independent oracles check the names: diffusers' own ldm converters
(`convert_from_ckpt`) for the spatial UNet, the VAE and OpenCLIP, and, where the fetched public
repository is beside us, the LVDM UNet itself run on the same random weights.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import re
import subprocess
import sys
import tarfile
import types

import jax
import numpy as np
import pytest
import torch
import transformers
from diffusers.pipelines.stable_diffusion import convert_from_ckpt as oracle

import torch_oracle
from myv_layout import (ATTENTION_RES, BLOCKS, CLIP_LAYERS, CLIP_MLP, CLIP_WIDTH, CONTEXT, HEAD, MC, MULT,
                        POSITIONS, TLEN, VOCAB, fixture_state_dict, lvdm_unet_shapes)
from vidjax.convert import common, make_your_video, pretrained
from vidjax.convert.cli import main
from vidjax.convert.diffusers_unet import convert_unet
from vidjax.convert.diffusers_vae import convert_vae
from vidjax.errors import EXIT_ERROR
from vidjax.models import clip
from vidjax.models.unet import VideoUNet

MIRROR = pathlib.Path(os.environ.get("VIDJAX_MYV_MIRROR", "/work/.mirror/AILab-CVC+Make-Your-Video/repo"))


def _save_ckpt(state_dict: dict[str, np.ndarray], path: pathlib.Path) -> pathlib.Path:
  torch.save({"state_dict": {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, "global_step": 7}, path)
  return path


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
  folder = tmp_path_factory.mktemp("myv")
  sd = fixture_state_dict()
  ckpt = _save_ckpt(sd, folder / "model.ckpt")
  reports = make_your_video.convert_make_your_video(ckpt, folder / "out")
  return sd, folder, reports, pretrained.load_pretrained(folder / "out")


@pytest.fixture(scope="module")
def run_unet(fixture):
  """Our converted VideoUNet, jitted once: (params, latents (1, 3, 8, 8, 5), t, context) -> (1, 3, 8, 8, 4)."""
  config = fixture[3]["unet"][0]
  return jax.jit(lambda params, x, t, ctx: VideoUNet(config).apply({"params": params}, x, t, ctx))


def test_fixture_converts_every_key_and_runs(fixture, run_unet):
  sd, _, reports, loaded = fixture
  for name in ("unet", "vae"):
    assert not reports[name].missing and not reports[name].unexpected, name
  # The text tower keeps all but the last OpenCLIP block (the penultimate layer is MYV's output).
  unused = reports["text_encoder"].unexpected
  assert not reports["text_encoder"].missing and len(unused) == 18
  assert all(k in ("text_projection", "logit_scale") or k.startswith(f"transformer.resblocks.{CLIP_LAYERS - 1}.")
             for k in unused)
  assert len(reports["unet"].converted) == len(lvdm_unet_shapes())
  assert reports["other"].unexpected == [
      "alphas_cumprod", "betas", "depth_stage_model.model.pretrained.model.cls_token"]
  config = loaded["unet"][0]
  assert (config.block_out_channels, config.num_attention_heads, config.cross_attention_dim) == (
      (32, 64, 128, 128), (4, 8, 16, 16), CONTEXT)
  assert (config.temporal_conv, config.temporal_relative_position, config.temporal_causal) == ("pseudo3d", TLEN, True)
  # Relative-position tables are plain params in our Attention: spot-check that LVDM's land there.
  table = sd["model.diffusion_model.input_blocks.1.2.transformer_blocks.0.attn2.relative_position_v.embeddings_table"]
  block = loaded["unet"][1]["down_blocks_0"]["temporal_attentions_0"]["transformer_blocks_0"]
  np.testing.assert_array_equal(block["attn2"]["relative_position_v"], table)
  x = np.random.default_rng(3).standard_normal((1, 3, 8, 8, 5)).astype(np.float32)
  out = run_unet(loaded["unet"][1], x, np.array([500]), np.zeros((1, 4, CONTEXT), np.float32))
  assert out.shape == (1, 3, 8, 8, 4) and bool(np.isfinite(out).all())
  manifest = pretrained.read_manifest(fixture[1] / "out")
  assert manifest["scheduler"]["beta_schedule"] == "scaled_linear" and manifest["video"]["temporal_window"] == 16


# LVDM key -> our param path, for tensors whose shape alone cannot tell a swap (CI has no LVDM code to
# compare outputs with): the temporal conv's Sequential indices, relative positions, the mid block's
# second ResBlock after the temporal transformer, an upsampler after one, time embedding and output.
SPOT_CHECKS = [
    ("input_blocks.1.0.temopral_conv.conv.2.3.weight", "down_blocks_0/resnets_0/temporal_conv/conv_2/conv/kernel"),
    ("input_blocks.1.0.temopral_conv.conv.3.3.weight", "down_blocks_0/resnets_0/temporal_conv/conv_3/conv/kernel"),
    ("input_blocks.2.0.temopral_conv.conv.1.0.bias", "down_blocks_0/resnets_1/temporal_conv/conv_1/norm/bias"),
    ("output_blocks.4.0.temopral_conv.conv_last.3.bias", "up_blocks_1/resnets_1/temporal_conv/conv_last/conv/bias"),
    ("input_blocks.4.2.transformer_blocks.0.attn1.relative_position_k.embeddings_table",
     "down_blocks_1/temporal_attentions_0/transformer_blocks_0/attn1/relative_position_k"),
    ("middle_block.2.proj_out.weight", "mid_block/temporal_attentions_0/proj_out/kernel"),
    ("middle_block.3.in_layers.2.weight", "mid_block/resnets_1/conv1/kernel"),
    ("output_blocks.5.3.conv.weight", "up_blocks_1/upsamplers_0/conv/kernel"),
    ("output_blocks.2.1.conv.weight", "up_blocks_0/upsamplers_0/conv/kernel"),
    ("time_embed.2.weight", "time_embedding/linear_2/kernel"),
    ("out.2.weight", "conv_out/kernel"),
]


@pytest.mark.parametrize("key, path", SPOT_CHECKS)
def test_tensors_land_where_the_layouts_say(fixture, key, path):
  value = fixture[0]["model.diffusion_model." + key]
  if path.endswith("kernel"):  # torch (O, I, *taps) -> ours (*taps, I, O)
    value = value.T if value.ndim == 2 else np.transpose(value, (*range(2, value.ndim), 1, 0))
  np.testing.assert_array_equal(common.flatten(fixture[3]["unet"][1])[tuple(path.split("/"))], value)


def _spatial_sd2_view(unet: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
  """The UNet keys without temporal modules, re-indexed as SD-2's ldm layout (what diffusers converts)."""
  index = lambda parts: 1 if parts[0] == "middle_block" else 2  # position of the module index in a key
  temporal = {".".join(p[:index(p) + 1]) for p in (k.split(".") for k in unet) if "relative_position" in ".".join(p)}
  out = {}
  for key, value in unet.items():
    parts = key.split(".")
    m = index(parts)
    if "temopral_conv" in parts or ".".join(parts[:m + 1]) in temporal:
      continue
    if parts[0] in ("middle_block", "output_blocks") and parts[m] == "3":
      parts[m] = "2"  # the module that followed a removed temporal transformer
    out[".".join(parts)] = torch.from_numpy(value)
  return out


def _strip(sd: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _assert_same_leaves(ours: dict, theirs: dict) -> None:
  ours, theirs = common.flatten(ours), common.flatten(theirs)
  assert set(theirs) <= set(ours)
  for path, value in theirs.items():
    np.testing.assert_array_equal(ours[path], value, err_msg="/".join(path))


def test_spatial_unet_names_match_diffusers_ldm_converter(fixture):
  sd, _, _, loaded = fixture
  config, params = loaded["unet"]
  theirs = oracle.convert_ldm_unet_checkpoint(
      _spatial_sd2_view(_strip(sd, "model.diffusion_model.")),
      {"layers_per_block": BLOCKS, "class_embed_type": None, "addition_embed_type": None},
      skip_extract_state_dict=True)
  image_config = dataclasses.replace(config, temporal_conv="none", temporal_attention=False,
                                     temporal_relative_position=0, temporal_causal=False)
  _, image_params, report = convert_unet({k: v.numpy() for k, v in theirs.items()}, image_config)
  assert not report.missing and not report.unexpected
  _assert_same_leaves(params, image_params)


def test_vae_names_match_diffusers_ldm_converter(fixture):
  sd, _, _, loaded = fixture
  config, params = loaded["vae"]
  theirs = oracle.convert_ldm_vae_checkpoint(
      {k: torch.from_numpy(v) for k, v in sd.items() if k.startswith("first_stage_model.")}, {})
  _, their_params, report = convert_vae({k: v.numpy() for k, v in theirs.items()}, config)
  assert not report.missing and not report.unexpected
  assert len(common.flatten(their_params)) == len(common.flatten(params))
  _assert_same_leaves(params, their_params)


def _open_clip_to_transformers(text: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
  """OpenCLIP text keys -> transformers 5 `CLIPTextModel` keys, by diffusers' `convert_from_ckpt` name tables.

  (diffusers' `convert_open_clip_checkpoint` itself still expects transformers 4's `.text_model`.)
  """
  out = {}
  for key, value in text.items():
    if key in oracle.textenc_conversion_map:
      name = oracle.textenc_conversion_map[key]
    elif key.startswith("transformer."):
      name = oracle.textenc_pattern.sub(lambda m: oracle.protected[re.escape(m.group(0))], key[len("transformer."):])
    else:
      continue
    value = torch.from_numpy(value)
    fused = re.match(r"(.*)\.in_proj_(weight|bias)$", name)
    for proj, part in zip("qkv", value.chunk(3)) if fused else ():
      out[f"{fused[1]}.{proj}_proj.{fused[2]}"] = part
    if not fused:
      out[name] = value
  return {k.removeprefix("text_model."): v for k, v in out.items() if k != "text_projection.weight"}


def test_text_encoder_matches_open_clip_loaded_into_transformers(fixture):
  sd, _, _, loaded = fixture
  config, params = loaded["text_encoder"]
  assert config.num_hidden_layers == CLIP_LAYERS - 1  # the penultimate layer is the output
  model = transformers.CLIPTextModel(transformers.CLIPTextConfig(
      vocab_size=VOCAB, hidden_size=CLIP_WIDTH, intermediate_size=CLIP_MLP, num_attention_heads=CLIP_WIDTH // 64,
      num_hidden_layers=CLIP_LAYERS, max_position_embeddings=POSITIONS, hidden_act="gelu", eos_token_id=VOCAB - 1))
  model.load_state_dict(_open_clip_to_transformers(_strip(sd, "cond_stage_model.model.")))
  ids = np.random.default_rng(5).integers(0, VOCAB, (2, POSITIONS)).astype(np.int32)
  with torch.no_grad():
    hidden = model.eval()(torch.from_numpy(ids).long(), output_hidden_states=True).hidden_states
    ref = model.final_layer_norm(hidden[-2]).numpy()
  ours = clip.encode_text(config, params, ids)["last_hidden_state"]
  assert float(np.abs(np.asarray(ours) - ref).max()) <= 1e-4


def _import_lvdm_unet(tmp_path, monkeypatch):
  """LVDM's UNetModel from the fetched public repository, extracted to tmp_path (skips if absent)."""
  if not MIRROR.is_dir():
    pytest.skip(f"{MIRROR} is absent: the public Make-Your-Video code is fetched only on dev machines")
  archive = subprocess.run(["git", "--git-dir", str(MIRROR), "archive", "HEAD", "lvdm"], capture_output=True)
  if archive.returncode:
    pytest.skip(f"cannot read {MIRROR}: {archive.stderr.decode()[:200]}")
  tarfile.open(fileobj=io.BytesIO(archive.stdout)).extractall(tmp_path, filter="data")
  # lvdm.basics imports utils.utils (cv2, torchvision) only for instantiate_from_config, unused here.
  stub = types.ModuleType("utils.utils")
  monkeypatch.setitem(sys.modules, "utils", types.ModuleType("utils"))
  monkeypatch.setitem(sys.modules, "utils.utils", stub)
  monkeypatch.setattr(stub, "instantiate_from_config", None, raising=False)
  monkeypatch.syspath_prepend(str(tmp_path))
  for name in [n for n in sys.modules if n == "lvdm" or n.startswith("lvdm.")]:
    monkeypatch.delitem(sys.modules, name)
  from lvdm.modules.networks.openaimodel3d import UNetModel  # noqa: E402 (needs the path above)
  return UNetModel


def test_matches_public_lvdm_unet_on_the_same_weights(tmp_path, monkeypatch, run_unet):
  unet_cls = _import_lvdm_unet(tmp_path, monkeypatch)
  torch.manual_seed(0)
  model = unet_cls(in_channels=5, model_channels=MC, out_channels=4, num_res_blocks=BLOCKS,
                   attention_resolutions=list(ATTENTION_RES), channel_mult=MULT, num_head_channels=HEAD,
                   context_dim=CONTEXT, use_linear=True, use_checkpoint=False, temporal_conv=True,
                   tempspatial_aware=True, temporal_attention=True, use_relative_position=True,
                   use_causal_attention=True, temporal_length=TLEN)
  torch_oracle.perturb_(model, seed=4, scale=0.05)  # zero-initialised out/proj_out/conv_last become visible
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  assert {k: tuple(v.shape) for k, v in state.items()} == lvdm_unet_shapes()  # the fixture is the public layout
  parts = {"unet": state, "vae": {}, "text_encoder": {}, "buffers": {}, "unused": {}}
  config, params, report = make_your_video.convert_parts(parts, "lvdm UNetModel")["unet"]
  assert not report.missing and not report.unexpected
  rng = np.random.default_rng(6)
  x = rng.standard_normal((1, 3, 8, 8, 5)).astype(np.float32)
  context = rng.standard_normal((1, 4, CONTEXT)).astype(np.float32)
  ours = np.asarray(run_unet(params, x, np.array([437]), context))
  with torch.no_grad():
    ref = model(torch.from_numpy(x).permute(0, 4, 1, 2, 3), torch.tensor([437]), context=torch.from_numpy(context))
  ref = ref.permute(0, 2, 3, 4, 1).numpy()
  error = float(np.abs(ours - ref).max())
  print(f"max |VideoUNet - LVDM UNetModel| = {error:.2e} (output scale {np.abs(ref).max():.2f})")
  assert error <= 1e-4 * max(1.0, float(np.abs(ref).max()))


@pytest.mark.parametrize("damage", ["corrupt", "wrong_shape", "missing_key", "unknown_key"])
def test_cli_errors_exit_nonzero_and_write_nothing(fixture, tmp_path, capsys, damage):
  sd = dict(fixture[0])
  key = "model.diffusion_model.input_blocks.1.2.proj_in.weight"
  if damage == "corrupt":
    (tmp_path / "model.ckpt").write_bytes(b"PK\x03\x04 not a checkpoint")
  else:
    if damage == "wrong_shape":
      sd[key] = sd[key][:, :-1]
    elif damage == "missing_key":
      del sd[key]
    else:
      sd["model_foo.layer.weight"] = np.zeros(3, np.float32)
    _save_ckpt(sd, tmp_path / "model.ckpt")
  assert main(["make-your-video", str(tmp_path / "model.ckpt"), str(tmp_path / "out")]) == EXIT_ERROR
  assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["model.ckpt"]
  message = capsys.readouterr().err
  assert "error" in message and (damage == "corrupt" or "proj_in" in message or "model_foo" in message)


def test_cli_bundles_tokenizer_and_depth_model_and_overwrites_only_when_asked(fixture, tmp_path, capsys):
  folder = fixture[1]
  tokenizer = tmp_path / "tokenizer"
  tokenizer.mkdir()
  tokens = ["!", *"abc", *(c + "</w>" for c in "abc"), "<|startoftext|>", "<|endoftext|>"]
  (tokenizer / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
  (tokenizer / "merges.txt").write_text("#version: 0.2\n")
  (tokenizer / "tokenizer_config.json").write_text(json.dumps({
      "model_max_length": POSITIONS, "pad_token": "!", "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
      "unk_token": "<|endoftext|>"}))
  transformers.DPTForDepthEstimation(transformers.DPTConfig(
      hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=20, image_size=32, patch_size=8,
      backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 8, 8],
      fusion_hidden_size=8)).save_pretrained(tmp_path / "dpt")
  args = ["make-your-video", str(folder / "model.ckpt"), str(folder / "out"), "--tokenizer", str(tokenizer),
          "--depth-estimator", str(tmp_path / "dpt")]
  capsys.readouterr()
  assert main(args) == EXIT_ERROR and "already exists" in capsys.readouterr().err
  assert main(args + ["--overwrite"]) == 0
  out = capsys.readouterr().out
  assert "unet: converted" in out and "depth_estimator: converted" in out and "other:" in out and "wrote" in out
  assert set(pretrained.load_pretrained(folder / "out", check_shapes=False)) == {
      "unet", "vae", "text_encoder", "depth_estimator"}
  manifest = pretrained.read_manifest(folder / "out")
  assert manifest["assets"] == ["tokenizer"] and manifest["depth_estimator_kwargs"]["image_size"] == 384
  assert clip.ClipTokenizer.from_folder(folder / "out" / "tokenizer")("abc").shape == (1, POSITIONS)
