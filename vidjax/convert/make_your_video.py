"""The released Make-Your-Video checkpoint (one Lightning .ckpt) -> a vidjax checkpoint directory.

The .ckpt (Doubiiu/Make-Your-Video `model.ckpt`, read with `torch.load(weights_only=True)`) holds
the whole `LatentDepthDiffusion` of the public LVDM code, keys in the ldm layout (`ldm.py`):

  model.diffusion_model.*  the video UNet  -> component `unet`: VideoUNet with the SD-2 layout and
                           temporal_conv='pseudo3d', temporal_attention=True, temporal_causal=True,
                           temporal_relative_position = temporal_length (16)
  first_stage_model.*      the SD VAE       -> component `vae`
  cond_stage_model.model.* OpenCLIP ViT-H text tower -> component `text_encoder`, its first 23 of 24
                           blocks: MYV reads the penultimate layer, so our `last_hidden_state` of the
                           kept blocks is exactly what conditions the UNet (as diffusers' SD-2 folder)
  depth_stage_model.*      MiDaS DPT-Hybrid in the timm layout: not converted (reported unused); pass
                           `depth_estimator=` an Intel/dpt-hybrid-midas folder (transformers' port of
                           the same MiDaS v3 DPT-Hybrid)
  model_ema.*              EMA copies, if any: not converted (reported unused)
  betas, alphas_cumprod, ... the DDPM buffers: not converted, but `betas` is checked against the
                           schedule written to the manifest (LVDM's 'linear' = diffusers' 'scaled_linear')
Any other key is refused: it is not this model.

The UNet config is read from the weights where they tell: in/out channels, model channels, context
width, and the head width and temporal_length (both from the relative-position tables);
channel_mult, num_res_blocks and attention_resolutions default to MYV's configs/inference_256_v1.0.yaml.
MYV's causal mask lets frame i attend to frames i-15..i (window 16) and the model was trained on
16 frames: `video` in the manifest records both (pass temporal_window=16 to reproduce it on
longer clips). No tokenizer ships in the .ckpt: OpenCLIP uses CLIP's BPE, so pass `tokenizer=` the
tokenizer/ folder of stable-diffusion-2(-depth) to bundle it.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np

from vidjax.convert import common, hf_clip, ldm, pretrained
from vidjax.convert.diffusers_unet import unet_param_shapes
from vidjax.convert.diffusers_vae import vae_param_shapes
from vidjax.convert.hf_dpt import convert_dpt
from vidjax.convert.sd2_depth import DEPTH_CONDITIONING, check_tokenizer
from vidjax.diffusion.schedules import make_schedule
from vidjax.errors import ConfigError
from vidjax.models.clip import CLIPConfig, CLIPTextConfig
from vidjax.models.unet import UNetConfig
from vidjax.models.vae import VAEConfig

PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text_encoder": "cond_stage_model.model."}
UNUSED_PREFIXES = ("depth_stage_model.", "model_ema.")
SCHEDULER = dict(source_class="lvdm.models.ddpm3d.LatentDepthDiffusion", num_train_timesteps=1000,
                 beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="epsilon",
                 timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False, clip_sample=False,
                 rescale_betas_zero_snr=False)
CAUSAL_WINDOW = 16  # LVDM's mask: frame i sees frames i-15..i
SCALE_FACTOR = 0.18215  # the yaml's scale_factor (a buffer only when scale_by_std)
OPEN_CLIP_HEAD_DIM = 64  # OpenCLIP text towers' head width; heads are not visible in the weights
_FIX = "point at Make-Your-Video's model.ckpt (an LVDM LatentDepthDiffusion checkpoint)"


def split_checkpoint(state_dict: Mapping[str, np.ndarray], source: str) -> dict[str, dict[str, np.ndarray]]:
  """{'unet', 'vae', 'text_encoder', 'buffers', 'unused'} -> keys (prefix stripped; 'unused' keeps them whole)."""
  parts: dict[str, dict[str, np.ndarray]] = {name: {} for name in (*PREFIXES, "buffers", "unused")}
  unknown = []
  for key, value in state_dict.items():
    name = next((n for n, prefix in PREFIXES.items() if key.startswith(prefix)), None)
    if name is not None:
      parts[name][key[len(PREFIXES[name]):]] = value
    elif "." not in key:
      parts["buffers"][key] = value
    elif key.startswith(UNUSED_PREFIXES):
      parts["unused"][key] = value
    else:
      unknown.append(key)
  if unknown or not parts["unet"]:
    raise ConfigError(source, f"not a Make-Your-Video checkpoint ({len(unknown)} unknown keys: {unknown[:5]}"
                      f"{'' if parts['unet'] else '; no model.diffusion_model.* keys'})", _FIX)
  return parts


def _get(state_dict: Mapping[str, np.ndarray], key: str, source: str) -> np.ndarray:
  if key not in state_dict:
    raise ConfigError(source, f"has no {key!r}, which this layout needs", _FIX)
  return np.asarray(state_dict[key])


def _count(state_dict: Mapping[str, np.ndarray], pattern: str) -> int:
  """1 + the largest index the pattern's group captures among the keys (0 if none match)."""
  return 1 + max((int(m.group(1)) for k in state_dict if (m := re.match(pattern, k))), default=-1)


def unet_config_from(unet: Mapping[str, np.ndarray], source: str, *, channel_mult: tuple[int, ...] = (1, 2, 4, 4),
                     num_res_blocks: int = 2, attention_resolutions: tuple[int, ...] = (4, 2, 1)) -> UNetConfig:
  """The VideoUNet config of an LVDM UNet state dict (keys without 'model.diffusion_model.')."""
  model_channels, in_channels = _get(unet, "input_blocks.0.0.weight", source).shape[:2]
  table = next((v for k, v in unet.items() if k.endswith("relative_position_k.embeddings_table")), None)
  if table is None or not any("temopral_conv" in k for k in unet):
    raise ConfigError(source, "its UNet lacks Make-Your-Video's temporal convs or relative-position temporal "
                      "attention", _FIX)
  head_dim = table.shape[1]
  channels = tuple(m * int(model_channels) for m in channel_mult)
  return UNetConfig(
      in_channels=int(in_channels), out_channels=int(_get(unet, "out.2.weight", source).shape[0]),
      block_out_channels=channels, layers_per_block=num_res_blocks,
      attention_levels=tuple(2 ** level in attention_resolutions for level in range(len(channels))),
      num_attention_heads=tuple(max(c // head_dim, 1) for c in channels),
      cross_attention_dim=int(_get(unet, "middle_block.1.transformer_blocks.0.attn2.to_k.weight", source).shape[1]),
      temporal_conv="pseudo3d", temporal_attention=True, temporal_relative_position=(table.shape[0] - 1) // 2,
      temporal_causal=True)


def vae_config_from(vae: Mapping[str, np.ndarray], source: str, scaling_factor: float = SCALE_FACTOR) -> VAEConfig:
  """The AutoencoderKL config of an ldm VAE state dict (keys without 'first_stage_model.')."""
  levels, blocks = _count(vae, r"encoder\.down\.(\d+)\."), _count(vae, r"encoder\.down\.0\.block\.(\d+)\.")
  channels = tuple(int(_get(vae, f"encoder.down.{i}.block.0.conv1.weight", source).shape[0]) for i in range(levels))
  return VAEConfig(in_channels=int(_get(vae, "encoder.conv_in.weight", source).shape[1]),
                   out_channels=int(_get(vae, "decoder.conv_out.weight", source).shape[0]),
                   block_out_channels=channels, layers_per_block=blocks,
                   latent_channels=int(_get(vae, "post_quant_conv.weight", source).shape[0]),
                   scaling_factor=scaling_factor)


def text_config_from(text: Mapping[str, np.ndarray], source: str) -> CLIPTextConfig:
  """The text-tower config of an OpenCLIP state dict: all blocks but the last (see the module docstring)."""
  vocab, width = _get(text, "token_embedding.weight", source).shape
  blocks = _count(text, r"transformer\.resblocks\.(\d+)\.")
  if blocks < 2:
    raise ConfigError(source, f"the OpenCLIP text tower has {blocks} blocks; its penultimate layer needs 2", _FIX)
  return CLIPTextConfig(
      vocab_size=int(vocab), hidden_size=int(width),
      intermediate_size=int(_get(text, "transformer.resblocks.0.mlp.c_fc.weight", source).shape[0]),
      num_attention_heads=max(int(width) // OPEN_CLIP_HEAD_DIM, 1), num_hidden_layers=blocks - 1,
      max_position_embeddings=int(_get(text, "positional_embedding", source).shape[0]), hidden_act="gelu",
      projection_dim=None, eos_token_id=int(vocab) - 1)  # CLIP's BPE puts <|endoftext|> last


def convert_parts(parts: Mapping[str, Mapping[str, np.ndarray]], source: str, **unet_layout
                  ) -> dict[str, tuple[Any, dict[str, Any], common.ConversionReport]]:
  """Converts the UNet, and the VAE and text tower when the checkpoint has them: name -> (config, params, report)."""
  scale = parts["buffers"].get("scale_factor")
  unet_config = unet_config_from(parts["unet"], source, **unet_layout)
  out = {"unet": (unet_config, *common.convert_state_dict(
      parts["unet"], unet_param_shapes(unet_config), source=f"{source} (UNet)", rename=ldm.unet_renamer(unet_config)))}
  if parts["vae"]:
    vae_config = vae_config_from(parts["vae"], source, SCALE_FACTOR if scale is None else float(scale))
    out["vae"] = (vae_config, *common.convert_state_dict(
        parts["vae"], vae_param_shapes(vae_config), source=f"{source} (VAE)",
        rename=ldm.vae_renamer(len(vae_config.block_out_channels))))
  if parts["text_encoder"]:
    text_config = text_config_from(parts["text_encoder"], source)
    out["text_encoder"] = (text_config, *common.convert_state_dict(
        ldm.split_fused_qkv(parts["text_encoder"]), hf_clip.param_shapes(CLIPConfig(text=text_config))["text_model"],
        source=f"{source} (text encoder)", rename=ldm.open_clip_rename,
        allow_unexpected=ldm.open_clip_unused(text_config.num_hidden_layers)))
  return out


def scheduler_settings(buffers: Mapping[str, np.ndarray], source: str) -> dict[str, Any]:
  """MYV's schedule; ConfigError if the checkpoint's own `betas` buffer says otherwise."""
  settings = dict(SCHEDULER)
  if "betas" in buffers:
    betas = np.asarray(buffers["betas"], np.float64)
    settings["num_train_timesteps"] = len(betas)
    expected = np.asarray(make_schedule(settings["beta_schedule"], len(betas), settings["beta_start"],
                                        settings["beta_end"]).betas, np.float64)
    if not np.allclose(betas, expected, rtol=1e-4, atol=1e-7):
      raise ConfigError(source, f"its betas ({betas[0]:.6g} .. {betas[-1]:.6g}) are not MYV's scaled-linear "
                        f"{settings['beta_start']} .. {settings['beta_end']} schedule", _FIX)
  return settings


def convert_make_your_video(ckpt: str | os.PathLike, out_dir: str | os.PathLike, *,
                            tokenizer: str | os.PathLike | None = None,
                            depth_estimator: str | os.PathLike | None = None,
                            **unet_layout) -> dict[str, common.ConversionReport]:
  """Converts the .ckpt (see the module docstring) and writes the checkpoint directory.

  Args:
    ckpt: the Lightning checkpoint (or a state dict saved with torch.save, or safetensors).
    out_dir: the vidjax checkpoint directory to write; nothing is written on any error.
    tokenizer: optional CLIP tokenizer folder to bundle as the `tokenizer` asset.
    depth_estimator: optional transformers DPT folder (Intel/dpt-hybrid-midas) to bundle.
    **unet_layout: channel_mult, num_res_blocks, attention_resolutions of the LVDM config.
  Returns:
    component name -> report, plus 'other' whose `unexpected` lists the keys not converted
    (depth_stage_model, EMA copies, DDPM buffers).
  """
  source = os.fspath(ckpt)
  parts = split_checkpoint(common.load_state_dict(source), source)
  converted = convert_parts(parts, source, **unet_layout)
  components = {name: (config, params) for name, (config, params, _) in converted.items()}
  reports = {name: report for name, (_, _, report) in converted.items()}
  assets = {}
  if tokenizer is not None:
    if "text_encoder" not in components:
      raise ConfigError(source, "a tokenizer was given but the checkpoint has no text encoder", _FIX)
    check_tokenizer(os.fspath(tokenizer), components["text_encoder"][0])
    assets["tokenizer"] = os.fspath(tokenizer)
  extra = {"source": {"kind": "make-your-video-ckpt", "path": os.path.abspath(source)},
           "scheduler": scheduler_settings(parts["buffers"], source), "conditioning": dict(DEPTH_CONDITIONING),
           "video": {"num_frames": converted["unet"][0].temporal_relative_position, "temporal_window": CAUSAL_WINDOW}}
  if depth_estimator is not None:
    dpt_config, dpt_params, reports["depth_estimator"] = convert_dpt(depth_estimator)
    components["depth_estimator"] = (dpt_config, dpt_params)
    # LVDM's prepare_midas_input resizes every frame to 384 x 384, aspect ratio not kept.
    extra["depth_estimator_kwargs"] = {"image_size": 384, "multiple": 1, "keep_aspect_ratio": False}
  pretrained.save_pretrained(out_dir, components, extra=extra, assets=assets)
  reports["other"] = common.ConversionReport(converted=[], missing=[],
                                             unexpected=sorted([*parts["unused"], *parts["buffers"]]))
  return reports
