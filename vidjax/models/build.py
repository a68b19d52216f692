"""`build_model(config)`: the VideoDiffusionModel an experiment config (configs/*.py) describes."""

from __future__ import annotations

from typing import Any

import ml_collections

from vidjax.conditioning.tokens import tokenize
from vidjax.models.clip import CLIPTextConfig, CLIPVisionConfig
from vidjax.models.unet import UNetConfig
from vidjax.models.vae import VAEConfig
from vidjax.models.video_model import ModelConfig, VideoDiffusionModel
from vidjax.models.video_model import size_multiple as _size_multiple


def _tuples(d: ml_collections.ConfigDict) -> dict[str, Any]:
  return {k: tuple(v) if isinstance(v, list) else v for k, v in d.to_dict().items()}


def build_model(config: ml_collections.ConfigDict, *, vae_scaling_factor: float | None = None) -> VideoDiffusionModel:
  """The model of `config.model` (null tokens from `config.data`'s tokenizer).

  `vae_scaling_factor` replaces `config.model.vae.scaling_factor` (what a VAE stage measured): the
  config stays as given, input only.
  """
  m = config.model
  text, null_tokens = None, ()
  if m.content == "text":
    text = CLIPTextConfig(**_tuples(m.text_encoder))
    null_tokens = tuple(int(i) for i in tokenize([""], config.data.tokenizer_dir, config.data.max_caption_tokens)[0])
  image = CLIPVisionConfig(**_tuples(m.image_encoder)) if m.content == "image" else None
  vae = _tuples(m.vae)
  if vae_scaling_factor is not None:
    vae["scaling_factor"] = float(vae_scaling_factor)
  return VideoDiffusionModel(ModelConfig(
      unet=unet_config(config), vae=VAEConfig(**vae), text_encoder=text, image_encoder=image,
      structure=m.structure, content=m.content, null_tokens=null_tokens, prediction_type=m.prediction_type,
      beta_schedule=m.beta_schedule))


def size_multiple(config: ml_collections.ConfigDict) -> int:
  """`ModelConfig.size_multiple` of `config.model` without building the model (no tokenizer read)."""
  return _size_multiple(VAEConfig(**_tuples(config.model.vae)), unet_config(config))


def unet_config(config: ml_collections.ConfigDict) -> UNetConfig:
  """`config.model.unet` as the UNetConfig it builds (its checks run; e.g. `context_input_dim`)."""
  return UNetConfig(**_tuples(config.model.unet))


def clip_configs(config: ml_collections.ConfigDict) -> tuple[CLIPTextConfig, CLIPVisionConfig]:
  """The (text, vision) towers a CLIP stage trains: `clip_stage.text_encoder` (with a projection) and
  `model.image_encoder`, the main stage's content encoder."""
  return CLIPTextConfig(**_tuples(config.clip_stage.text_encoder)), CLIPVisionConfig(**_tuples(config.model.image_encoder))
