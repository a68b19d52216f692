"""AutoencoderKL: parity with diffusers, the per-frame video helpers, and the converter's errors."""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL
from safetensors.numpy import save_file

import torch_oracle
from vidjax.convert import common
from vidjax.convert.diffusers_vae import convert_vae
from vidjax.errors import ConfigError, InputError
from vidjax.models.vae import AutoencoderKL, VAEConfig, decode_video, encode_video
from vidjax.parallel.sharding import unbox

# Three levels of different widths (downsampling factor 4), 8 groups, two resnets per encoder level
# (three per decoder level): enough to catch swapped blocks, channels or norms.
TINY_DIFFUSERS = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 24, 32), layers_per_block=2,
    latent_channels=4, norm_num_groups=8, sample_size=32)
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def diffusers_vae(tmp_path_factory):
  torch.manual_seed(0)
  model = torch_oracle.perturb_(TorchAutoencoderKL(**TINY_DIFFUSERS), seed=1, scale=0.05)
  folder = tmp_path_factory.mktemp("vae")
  model.save_pretrained(folder)
  return model, folder


@pytest.fixture(scope="module")
def converted(diffusers_vae):
  return convert_vae(diffusers_vae[1])


@functools.partial(jax.jit, static_argnames=("vae", "method"))
def _apply(vae, params, x, method):
  """One compiled `encode` / `decode` per (model, shape), shared across tests."""
  return vae.apply({"params": params}, x, method=method)


def _uniform(shape, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def test_config_from_diffusers(converted):
  config, _, report = converted
  assert config == VAEConfig(block_out_channels=(16, 24, 32), layers_per_block=2, norm_num_groups=8,
                             sample_size=32)
  assert config.downsample_factor == 4
  assert not report.missing and not report.unexpected and len(report.converted) > 100
  with pytest.raises(ConfigError, match="act_fn"):
    VAEConfig.from_diffusers({**TINY_DIFFUSERS, "act_fn": "gelu"})
  with pytest.raises(ConfigError, match="latents_mean"):
    VAEConfig.from_diffusers({**TINY_DIFFUSERS, "latents_mean": [0.0] * 4})


def test_encode_and_decode_match_diffusers(diffusers_vae, converted):
  torch_model, _ = diffusers_vae
  config, params, _ = converted
  vae = AutoencoderKL(config)
  # 27x21 is odd at every level: it pins the side of the asymmetric downsampling pad.
  images = _uniform((2, 27, 21, 3))
  mean, logvar = _apply(vae, params, images, "encode")
  latents = np.random.default_rng(1).standard_normal((2, 7, 5, 4)).astype(np.float32)
  decoded = _apply(vae, params, latents, "decode")
  with torch.no_grad():
    posterior = torch_model.encode(torch_oracle.to_torch_nchw(images)).latent_dist
    reference = torch_model.decode(torch_oracle.to_torch_nchw(latents)).sample
  assert mean.shape == logvar.shape == (2, 6, 5, 4)
  assert decoded.shape == (2, 28, 20, 3)
  np.testing.assert_allclose(mean, torch_oracle.from_torch_nchw(posterior.mean), atol=1e-4, rtol=0)
  np.testing.assert_allclose(logvar, torch_oracle.from_torch_nchw(posterior.logvar), atol=1e-4, rtol=0)
  np.testing.assert_allclose(decoded, torch_oracle.from_torch_nchw(reference), atol=1e-4, rtol=0)


def test_logvar_is_clipped_as_diffusers(converted):
  config, params, _ = converted
  flat = common.flatten(params)
  # A huge logvar half of quant_conv's bias drives logvar past 20 everywhere.
  bias = flat[("quant_conv", "bias")].copy()
  bias[config.latent_channels:] = 1e4
  flat[("quant_conv", "bias")] = bias
  _, logvar = _apply(AutoencoderKL(config), common.unflatten(flat), _uniform((2, 27, 21, 3)), "encode")
  np.testing.assert_array_equal(logvar, 20.0)


def test_video_helpers_apply_the_image_vae_per_frame(converted):
  config, params, _ = converted
  image_vae = AutoencoderKL(config)
  # A shift exercises both halves of the latent normalisation (SD itself has none).
  vae = AutoencoderKL(dataclasses.replace(config, scaling_factor=0.5, shift_factor=0.25))
  # 28x20 frames give the 7x5 latents the parity test decodes, so that compiled decode is reused.
  frames = _uniform((2, 3, 28, 20, 3), seed=2)
  per_frame = [_apply(image_vae, params, frames[:, t], "encode") for t in range(3)]
  mean = np.stack([m for m, _ in per_frame], axis=1)
  std = np.exp(0.5 * np.stack([lv for _, lv in per_frame], axis=1))

  latents = encode_video(vae, params, frames)
  assert latents.shape == (2, 3, 7, 5, 4)
  np.testing.assert_allclose(latents, (mean - 0.25) * 0.5, atol=1e-5, rtol=0)
  # 6 frames in chunks of 4: the last chunk is padded; a sample's noise does not depend on chunking.
  rng = jax.random.key(7)
  sampled = encode_video(vae, params, frames, rng, frames_per_chunk=4)
  noise = jax.random.normal(rng, mean.shape)
  np.testing.assert_allclose(sampled, (mean + std * noise - 0.25) * 0.5, atol=1e-5, rtol=0)

  decoded = decode_video(vae, params, latents, frames_per_chunk=4)
  assert decoded.shape == frames.shape
  expected = np.stack([_apply(image_vae, params, mean[:, t], "decode") for t in range(3)], axis=1)
  np.testing.assert_allclose(decoded, expected, atol=1e-5, rtol=0)


def test_a_wider_deeper_decoder_has_its_own_widths_and_keeps_the_encoder_and_shapes():
  base = VAEConfig(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4)
  wide = dataclasses.replace(base, decoder_block_out_channels=(12, 24), decoder_layers_per_block=2)
  x = _uniform((1, 8, 8, 3), seed=3)
  narrow_params = unbox(AutoencoderKL(base).init(jax.random.key(0), x)["params"])
  params = unbox(AutoencoderKL(wide).init(jax.random.key(0), x)["params"])
  flat, narrow = common.flatten(params), common.flatten(narrow_params)
  encoder = [p for p in narrow if p[0] == "encoder"]
  assert encoder and all(flat[p].shape == narrow[p].shape for p in encoder)
  assert flat[("decoder", "conv_in", "kernel")].shape == (3, 3, 4, 24)  # the last level's width
  assert ("decoder", "up_blocks_1", "resnets_2", "conv1", "kernel") in flat  # 2 + 1 resnets per level
  assert ("decoder", "up_blocks_1", "resnets_2", "conv1", "kernel") not in narrow
  assert AutoencoderKL(wide).apply({"params": params}, x).shape == x.shape
  with pytest.raises(ConfigError, match="as many levels as the encoder"):
    dataclasses.replace(base, decoder_block_out_channels=(8, 16, 16))
  with pytest.raises(ConfigError, match="decoder_block_out_channels"):
    dataclasses.replace(base, decoder_block_out_channels=(8, 10))


def test_video_helpers_refuse_bad_shapes(converted):
  config, params, _ = converted
  vae = AutoencoderKL(config)
  with pytest.raises(InputError, match="multiple of 4"):
    encode_video(vae, params, np.zeros((1, 2, 18, 12, 3), np.float32))
  with pytest.raises(InputError, match=r"\(B, T, H, W, 3\)"):
    encode_video(vae, params, np.zeros((2, 16, 12, 3), np.float32))
  with pytest.raises(InputError, match="frames_per_chunk"):
    encode_video(vae, params, np.zeros((1, 2, 16, 12, 3), np.float32), frames_per_chunk=0)
  with pytest.raises(InputError, match=r"\(B, T, H, W, 4\)"):
    decode_video(vae, params, np.zeros((1, 2, 4, 3, 3), np.float32))


def test_checkpoints_with_deprecated_attention_names_convert(diffusers_vae, converted):
  config, params, _ = converted
  old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  state_dict = common.load_state_dict(diffusers_vae[1] / WEIGHTS)
  renamed = {functools.reduce(lambda k, kv: k.replace(f".{kv[0]}.", f".{kv[1]}."), old_names.items(), key): value
             for key, value in state_dict.items()}
  assert any(".proj_attn." in key for key in renamed)
  _, old_params, report = convert_vae(renamed, config)
  assert not report.unexpected
  jax.tree.map(np.testing.assert_array_equal, old_params, params)


def _copy_config(diffusers_vae, tmp_path):
  shutil.copy(diffusers_vae[1] / "config.json", tmp_path / "config.json")
  return tmp_path


def test_missing_files_raise_input_errors(diffusers_vae, tmp_path):
  with pytest.raises(InputError, match="config.json"):
    convert_vae(tmp_path)
  folder = _copy_config(diffusers_vae, tmp_path)
  with pytest.raises(InputError, match=f"{folder}.*no weights file"):
    convert_vae(folder)


def test_wrong_shaped_tensor_raises_config_error(diffusers_vae, tmp_path):
  folder = _copy_config(diffusers_vae, tmp_path)
  state_dict = common.load_state_dict(diffusers_vae[1] / WEIGHTS)
  state_dict["decoder.conv_in.weight"] = np.zeros((32, 4, 3, 1), np.float32)
  save_file(state_dict, folder / WEIGHTS)
  with pytest.raises(ConfigError, match=f"{folder / WEIGHTS}.*decoder.conv_in.weight"):
    convert_vae(folder)


def test_truncated_safetensors_raises_input_error(diffusers_vae, tmp_path):
  folder = _copy_config(diffusers_vae, tmp_path)
  data = (diffusers_vae[1] / WEIGHTS).read_bytes()
  (folder / WEIGHTS).write_bytes(data[:len(data) // 2])
  with pytest.raises(InputError, match=f"{folder / WEIGHTS}.*not a readable safetensors file"):
    convert_vae(folder)


def test_unsupported_config_json_raises_config_error(diffusers_vae, tmp_path):
  config = json.loads((diffusers_vae[1] / "config.json").read_text())
  config["down_block_types"] = ["DownEncoderBlock2D", "AttnDownEncoderBlock2D", "DownEncoderBlock2D"]
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ConfigError, match="down_block_types"):
    convert_vae(tmp_path)


def test_bfloat16_compute_stays_close_to_float32(converted):
  config, params, _ = converted
  images = _uniform((2, 28, 20, 3), seed=3)
  mean32, _ = _apply(AutoencoderKL(config), params, images, "encode")
  vae16 = AutoencoderKL(config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  params16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
  mean16, logvar16 = _apply(vae16, params16, images, "encode")
  assert mean16.dtype == logvar16.dtype == jnp.float32
  assert np.abs(np.asarray(mean16) - np.asarray(mean32)).max() < 0.1 * np.abs(np.asarray(mean32)).max()
