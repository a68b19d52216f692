"""DPT depth: parity with transformers (DPT-Large and DPT-Hybrid layouts), the estimator, errors."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
import torch
from transformers import DPTConfig as HFDPTConfig
from transformers import DPTForDepthEstimation
from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

import torch_oracle
from vidjax.convert import common
from vidjax.convert import hf_dpt
from vidjax.convert.hf_dpt import convert_dpt
from vidjax.errors import ConfigError, InputError
from vidjax.models.depth import (DPT, DepthEstimator, model_input_size, normalize_depth_for_unet,
                                 preprocess_frames)

# Odd sizes catch transposed axes: hidden 36 in 4 heads of 9, MLP 37, four neck widths. The ViT
# uses 8-pixel patches so a 40-pixel input gives a 5x5 grid: the 4x4 position embeddings are
# interpolated and the 0.5x stage (5 -> 3) comes back at 6, so the fusion resizes its skip.
TINY_VIT = dict(hidden_size=36, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37,
                backbone_out_indices=[0, 1, 2, 3], fusion_hidden_size=16)
TINY_LARGE = dict(TINY_VIT, image_size=32, patch_size=8, neck_hidden_sizes=[8, 12, 16, 20],
                  reassemble_factors=[4, 2, 1, 0.5])
# DPT-Hybrid: a BiT with 24-channel stage 2 (bottleneck width make_div(6) = 8), 48-pixel images so
# TF-'SAME' padding meets odd sizes (6 -> 3) and the 3x3 ViT grid fuses off-grid too.
TINY_HYBRID = dict(TINY_VIT, image_size=48, patch_size=16, is_hybrid=True, neck_hidden_sizes=[16, 24, 16, 20],
                   reassemble_factors=[1, 1, 1, 0.5], backbone_featmap_shape=[1, 32, 3, 3],
                   backbone_config=dict(global_padding="same", layer_type="bottleneck", depths=[1, 2, 1],
                                        hidden_sizes=[16, 24, 32], embedding_size=8, num_groups=4,
                                        out_features=["stage1", "stage2", "stage3"], embedding_dynamic_padding=True))


def _save_model(kwargs, folder, seed):
  torch.manual_seed(seed)
  model = torch_oracle.perturb_(DPTForDepthEstimation(HFDPTConfig(**kwargs)), seed=seed + 1, scale=0.1)
  with torch.no_grad():
    model.head.head[4].bias.add_(1.0)  # keep most of the final ReLU's input positive: a zero map proves nothing
  model.save_pretrained(folder)
  return model


@pytest.fixture(scope="module")
def large(tmp_path_factory):
  folder = tmp_path_factory.mktemp("dpt_large")
  return _save_model(TINY_LARGE, folder, seed=0), folder


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory):
  folder = tmp_path_factory.mktemp("dpt_hybrid")
  return _save_model(TINY_HYBRID, folder, seed=10), folder


def _relative_error(ours, ref) -> float:
  return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


def _check_parity(torch_model, folder, size):
  config, params, report = convert_dpt(folder)
  assert not report.missing and not report.unexpected
  x = np.random.default_rng(size).standard_normal((2, size, size, 3)).astype(np.float32)
  ours = jax.jit(DPT(config).apply)({"params": params}, x)
  with torch.no_grad():
    ref = torch_model(torch_oracle.to_torch_nchw(x)).predicted_depth.numpy()
  assert ours.shape == ref.shape
  assert (ref > 0).mean() > 0.5
  assert _relative_error(ours, ref) <= 1e-4


@pytest.mark.parametrize("size", [32, 40])
def test_large_matches_transformers(large, size):
  _check_parity(*large, size)


def test_hybrid_matches_transformers(hybrid):
  _check_parity(*hybrid, 48)


def test_pytorch_bin_converts_like_safetensors(large, tmp_path):
  torch_model, folder = large
  shutil.copy(folder / "config.json", tmp_path / "config.json")
  torch.save(torch_model.state_dict(), tmp_path / "pytorch_model.bin")
  _, from_bin, _ = convert_dpt(tmp_path)
  _, from_safetensors, _ = convert_dpt(folder)
  flat_bin, flat_st = common.flatten(from_bin), common.flatten(from_safetensors)
  assert flat_bin.keys() == flat_st.keys()
  for path, value in flat_st.items():
    np.testing.assert_array_equal(flat_bin[path], value, err_msg="/".join(path))


def test_preprocessing_matches_dpt_image_processor():
  y, x = np.mgrid[0:50, 0:70]  # smooth, so PIL's per-pass uint8 rounding stays within a grey level
  frames = np.stack([127 + 100 * np.sin(x / 7 + k) * np.cos(y / 5) for k in range(3)], -1)[None].astype(np.uint8)
  for target in (96, 32):  # up- and down-sampling
    processor = DPTImageProcessorPil(keep_aspect_ratio=True, ensure_multiple_of=32,
                                     size={"height": target, "width": target})
    ref = np.moveaxis(processor(list(frames), return_tensors="np").pixel_values, 1, -1)
    ours = preprocess_frames(frames, model_input_size(50, 70, image_size=target))
    assert ours.shape == ref.shape
    np.testing.assert_allclose(np.asarray(ours), ref, atol=0.02, rtol=0)


def test_estimator_matches_transformers_end_to_end(large):
  torch_model, folder = large
  frames = np.random.default_rng(1).integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)
  estimator = hf_dpt.load_depth_estimator(folder, batch_size=2, image_size=32, multiple=16)
  pixels = preprocess_frames(frames, (32, 32))
  with torch.no_grad():
    ref = torch_model(torch_oracle.to_torch_nchw(np.asarray(pixels))).predicted_depth
    ref = torch.nn.functional.interpolate(ref[:, None], size=(48, 48), mode="bicubic", align_corners=False)
  ours = estimator.inverse_depth(frames)
  assert _relative_error(ours, ref[:, 0].numpy()) <= 1e-4


def test_estimator_batches_agree_and_normalise_per_clip(hybrid):
  frames = np.random.default_rng(2).integers(0, 256, (5, 40, 72, 3), dtype=np.uint8)  # non-square
  in_one = hf_dpt.load_depth_estimator(hybrid[1], batch_size=5, image_size=48, multiple=16)
  in_three = DepthEstimator(in_one.config, in_one.params, batch_size=2, image_size=48, multiple=16)
  raw = in_one.inverse_depth(frames)
  assert raw.shape == (5, 40, 72) and raw.dtype == np.float32
  assert _relative_error(in_three.inverse_depth(frames), raw) <= 1e-5
  depth = in_three(frames)
  assert depth.shape == (5, 40, 72) and depth.dtype == np.float32
  assert depth.min() == 0.0 and depth.max() == 1.0
  np.testing.assert_allclose(depth, (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-5)
  with pytest.raises(InputError, match="uint8"):
    in_one(frames.astype(np.float32))


def test_normalize_depth_for_unet_matches_diffusers_formula():
  depth = np.random.default_rng(3).uniform(0, 40, (3, 48, 40)).astype(np.float32)
  # diffusers StableDiffusionDepth2ImgPipeline.prepare_depth_map, after the depth model
  ref = torch.nn.functional.interpolate(torch.from_numpy(depth)[:, None], size=(6, 5), mode="bicubic",
                                        align_corners=False)
  low, high = torch.amin(ref, dim=[1, 2, 3], keepdim=True), torch.amax(ref, dim=[1, 2, 3], keepdim=True)
  ref = (2.0 * (ref - low) / (high - low) - 1.0)[:, 0].numpy()
  np.testing.assert_allclose(np.asarray(normalize_depth_for_unet(depth, (6, 5))), ref, atol=1e-5, rtol=0)


def _broken_copy(folder, tmp_path):
  broken = tmp_path / "broken"
  shutil.copytree(folder, broken)
  return broken


def test_missing_weights(large, tmp_path):
  broken = _broken_copy(large[1], tmp_path)
  (broken / "model.safetensors").unlink()
  with pytest.raises(InputError, match="no weights file"):
    convert_dpt(broken)


def test_corrupt_safetensors(large, tmp_path):
  broken = _broken_copy(large[1], tmp_path)
  data = (broken / "model.safetensors").read_bytes()
  (broken / "model.safetensors").write_bytes(data[:len(data) // 2])
  with pytest.raises(InputError, match="not a readable safetensors file"):
    convert_dpt(broken)


def test_wrong_shapes_are_listed(large, tmp_path):
  broken = _broken_copy(large[1], tmp_path)
  config = json.loads((broken / "config.json").read_text())
  config["fusion_hidden_size"] = 24
  (broken / "config.json").write_text(json.dumps(config))
  with pytest.raises(ConfigError, match=r"shape mismatches: .*neck\.convs\.0\.weight"):
    convert_dpt(broken)


@pytest.mark.parametrize("change,message", [
    ({"model_type": "vit", "architectures": ["ViTModel"]}, "not DPT depth"),
    ({"architectures": ["DPTForSemanticSegmentation"]}, "not DPT depth"),
    ({"use_batch_norm_in_fusion_residual": True}, "use_batch_norm_in_fusion_residual")])
def test_unsupported_configs(large, tmp_path, change, message):
  broken = _broken_copy(large[1], tmp_path)
  config = json.loads((broken / "config.json").read_text())
  (broken / "config.json").write_text(json.dumps({**config, **change}))
  with pytest.raises(ConfigError, match=message):
    convert_dpt(broken)


def test_not_a_folder(tmp_path):
  with pytest.raises(InputError, match="not a folder"):
    convert_dpt(tmp_path / "absent")
