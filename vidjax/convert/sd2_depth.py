"""A diffusers stable-diffusion-2-depth folder -> one vidjax checkpoint directory.

The source is what `StableDiffusionDepth2ImgPipeline.save_pretrained` writes (the layout of
stabilityai/stable-diffusion-2-depth): model_index.json and the folders unet, vae, text_encoder,
tokenizer, scheduler, depth_estimator (DPT-Hybrid MiDaS) and feature_extractor. The output (see
`pretrained.py`) holds the components unet, vae, text_encoder (a `CLIPTextConfig` tower) and
depth_estimator, the tokenizer and feature_extractor folders as assets, and these entries:

  scheduler      the noise schedule and DDIM settings from scheduler_config.json (SD-2-depth ships a
                 PNDM config; only its schedule fields matter to our DDIM): beta_schedule, beta_start,
                 beta_end, num_train_timesteps, prediction_type, timestep_spacing, steps_offset,
                 set_alpha_to_one, clip_sample, rescale_betas_zero_snr (diffusers' defaults where absent).
  conditioning   structure 'depth_1ch': one channel of DPT inverse depth, bicubic-resized from the DPT
                 output straight to the latent size (diffusers' prepare_depth_map; going through the
                 frame size first, as `DepthEstimator` does, resamples twice), min-max normalised to
                 [-1, 1] per frame (`normalize_depth_for_unet`) and concatenated to the 4 latent
                 channels (hence unet.in_channels = 5); content 'text_tokens' with text_output
                 'last_hidden_state'. diffusers' SD-2 `encode_prompt` feeds the UNet
                 `text_encoder(ids)[0]`, the final-layer-normed last hidden state of the *23*-layer
                 encoder its text_encoder folder holds, which is OpenCLIP ViT-H's penultimate layer
                 (SD-2's `FrozenOpenCLIPEmbedder(layer="penultimate")`); see `vidjax.models.clip`.
  depth_estimator_kwargs  `DepthEstimator` preprocessing read from the feature extractor: image_size,
                 multiple, keep_aspect_ratio (our resize is always bicubic).

`unet_overrides` builds a video UNet around the frozen image weights (e.g. `TEMPORAL_PRESETS
['make-your-video']`); its temporal layers are reported missing and keep their zero-output init.
"""

from __future__ import annotations

import os
from typing import Any

from vidjax.convert import common, pretrained
from vidjax.convert.diffusers_unet import convert_unet
from vidjax.convert.diffusers_vae import convert_vae
from vidjax.convert.hf_clip import load_clip
from vidjax.convert.hf_dpt import convert_dpt
from vidjax.diffusion.schedules import BETA_SCHEDULES, PREDICTION_TYPES
from vidjax.errors import ConfigError, InputError
from vidjax.models.clip import ClipTokenizer

REQUIRED = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "depth_estimator", "feature_extractor")
TEMPORAL_PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "make-your-video": dict(temporal_conv="pseudo3d", temporal_attention=True, temporal_relative_position=16,
                            temporal_causal=True),
}
# diffusers' DDIMScheduler defaults, for keys a scheduler_config.json leaves out.
_SCHEDULER_DEFAULTS = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                           prediction_type="epsilon", timestep_spacing="leading", steps_offset=0,
                           set_alpha_to_one=True, clip_sample=True, rescale_betas_zero_snr=False)
DEPTH_CONDITIONING = {"structure": "depth_1ch", "depth_normalization": "per_frame_minmax", "content": "text_tokens",
                      "text_output": "last_hidden_state"}


def check_components(src: str) -> None:
  """InputError listing every required component that `src` (or its model_index.json) lacks."""
  if not os.path.isdir(src):
    raise InputError(src, "source folder not found", "point at a stable-diffusion-2-depth folder (model_index.json, "
                     "unet/, vae/, ...) saved by diffusers")
  index = common.read_json(os.path.join(src, "model_index.json"))
  # save_pretrained lists an absent component as [null, null]
  listed = lambda name: isinstance(index.get(name), list) and any(index[name])
  missing = [name for name in REQUIRED if not listed(name) or not os.path.isdir(os.path.join(src, name))]
  if missing:
    raise InputError(src, f"missing components {missing} (a {index.get('_class_name', 'pipeline')} folder)",
                     "download the complete stable-diffusion-2-depth folder (all of " + ", ".join(REQUIRED) + ")")


def scheduler_settings(folder: str) -> dict[str, Any]:
  """The schedule and DDIM fields of a diffusers scheduler_config.json (see the module docstring)."""
  path = os.path.join(folder, "scheduler_config.json")
  raw = common.read_json(path)
  settings = {k: raw.get(k, default) for k, default in _SCHEDULER_DEFAULTS.items()}
  if raw.get("trained_betas") is not None or settings["beta_schedule"] not in BETA_SCHEDULES:
    raise ConfigError(path, f"beta schedule {settings['beta_schedule']!r} (or explicit trained_betas) is not supported",
                      f"use one of {BETA_SCHEDULES}")
  if settings["prediction_type"] not in PREDICTION_TYPES:
    raise ConfigError(path, f"prediction_type {settings['prediction_type']!r} is not supported",
                      f"use one of {PREDICTION_TYPES}")
  return {"source_class": raw.get("_class_name"), **settings}


def depth_estimator_kwargs(folder: str) -> dict[str, Any]:
  """`DepthEstimator` keyword arguments from a DPT preprocessor_config.json."""
  path = os.path.join(folder, "preprocessor_config.json")
  raw = common.read_json(path)
  size = raw.get("size", 384)  # an int (older feature extractors) or {"height", "width"}
  if isinstance(size, dict):
    size = size.get("height") if size.get("height") == size.get("width") else None
  if not isinstance(size, int):
    raise ConfigError(path, f"size {raw.get('size')!r} is not square", "use a square DPT input size (384 for MiDaS)")
  return {"image_size": size, "multiple": int(raw.get("ensure_multiple_of", 1)),
          "keep_aspect_ratio": bool(raw.get("keep_aspect_ratio", False))}


def check_tokenizer(folder: str, text_config) -> None:
  """InputError for an unreadable tokenizer folder; ConfigError if its ids or context exceed the text encoder's."""
  tokenizer = ClipTokenizer.from_folder(folder)
  vocab = len(tokenizer.tokenizer)
  # Out-of-range ids would not fail: jax clamps gather indices, silently embedding the wrong tokens.
  if vocab > text_config.vocab_size or tokenizer.context_length > text_config.max_position_embeddings:
    raise ConfigError(folder, f"the tokenizer ({vocab} tokens, {tokenizer.context_length}-token context) exceeds the "
                      f"text encoder ({text_config.vocab_size} tokens, "
                      f"{text_config.max_position_embeddings} positions)",
                      "use the tokenizer saved with the text encoder")


def _check_compatible(src: str, unet, vae, text) -> None:
  """The shapes the components exchange: latents + 1 depth channel in, latents out, text width into attention."""
  problems = []
  if unet.in_channels != vae.latent_channels + 1:
    problems.append(f"unet.in_channels {unet.in_channels} != vae latent_channels {vae.latent_channels} + 1 depth "
                    "channel (is this a depth model?)")
  if unet.out_channels != vae.latent_channels:
    problems.append(f"unet.out_channels {unet.out_channels} != vae latent_channels {vae.latent_channels}")
  if unet.cross_attention_dim != text.hidden_size:
    problems.append(f"unet.cross_attention_dim {unet.cross_attention_dim} != text_encoder hidden_size "
                    f"{text.hidden_size}")
  if problems:
    raise ConfigError(src, "components do not fit together: " + "; ".join(problems),
                      "convert a stable-diffusion-2-depth folder whose components belong together")


def convert_sd2_depth(src: str | os.PathLike, out_dir: str | os.PathLike, *,
                      unet_overrides: dict[str, Any] | None = None,
                      seed: int = 0) -> dict[str, common.ConversionReport]:
  """Converts the folder and writes the checkpoint directory (nothing is written on any error).

  Args:
    src: the diffusers stable-diffusion-2-depth folder.
    out_dir: the vidjax checkpoint directory to write (see `pretrained.py`).
    unet_overrides: UNetConfig fields to change, e.g. TEMPORAL_PRESETS['make-your-video'].
    seed: init seed of UNet params the source lacks (temporal layers).
  Returns:
    component name -> conversion report.
  Raises:
    InputError: a missing folder, component or file, or an unreadable one.
    ConfigError: unsupported settings, or weights that do not fit their config or each other.
  """
  src = os.fspath(src)
  check_components(src)
  join = lambda name: os.path.join(src, name)
  unet_config, unet_params, unet_report = convert_unet(join("unet"), seed=seed, **(unet_overrides or {}))
  vae_config, vae_params, vae_report = convert_vae(join("vae"))
  clip_config, clip_params, clip_report = load_clip(join("text_encoder"), towers=("text",))
  _check_compatible(src, unet_config, vae_config, clip_config.text)
  check_tokenizer(join("tokenizer"), clip_config.text)
  dpt_config, dpt_params, dpt_report = convert_dpt(join("depth_estimator"))
  extra = {"source": {"kind": "diffusers-sd2-depth", "path": os.path.abspath(src)},
           "scheduler": scheduler_settings(join("scheduler")), "conditioning": dict(DEPTH_CONDITIONING),
           "depth_estimator_kwargs": depth_estimator_kwargs(join("feature_extractor"))}
  pretrained.save_pretrained(out_dir, {"unet": (unet_config, unet_params), "vae": (vae_config, vae_params),
                                       "text_encoder": (clip_config.text, clip_params["text_model"]),
                                       "depth_estimator": (dpt_config, dpt_params)},
                             extra=extra, assets={"tokenizer": join("tokenizer"),
                                                  "feature_extractor": join("feature_extractor")})
  return {"unet": unet_report, "vae": vae_report, "text_encoder": clip_report, "depth_estimator": dpt_report}
