"""Hugging Face CLIP folders -> vidjax CLIP params.

Reads folders saved by transformers' `save_pretrained` (config.json + model.safetensors or
pytorch_model.bin) of `CLIPModel`, `CLIPTextModel`, `CLIPTextModelWithProjection`, `CLIPVisionModel`
and `CLIPVisionModelWithProjection`, e.g. SD-2's `text_encoder/` (OpenCLIP ViT-H, a `CLIPTextModel`)
or an image-variation pipeline's `image_encoder/` (a `CLIPVisionModelWithProjection`).

Names: a single tower's keys carry a `text_model.` / `vision_model.` prefix (transformers 4) or none
(transformers 5 `CLIPTextModel`); both are brought to the prefixed form. Attention projections take
the shared `Attention` names, and the projections move into their tower. `position_ids` buffers and
`CLIPModel.logit_scale` have no place in our params and are reported as unexpected.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vidjax.convert import common
from vidjax.errors import ConfigError
from vidjax.models.clip import CLIPConfig, CLIPTextConfig, CLIPTextTransformer, CLIPVisionConfig, CLIPVisionTransformer

WEIGHT_STEMS = ("model", "pytorch_model")
TOWERS = ("text", "vision")
_DEFAULT_PROJECTION_DIM = 512  # transformers' default when config.json omits it
# architecture -> (model_type, towers, has projections)
_ARCHITECTURES = {
    "CLIPModel": ("clip", TOWERS, True),
    "CLIPTextModel": ("clip_text_model", ("text",), False),
    "CLIPTextModelWithProjection": ("clip_text_model", ("text",), True),
    "CLIPVisionModel": ("clip_vision_model", ("vision",), False),
    "CLIPVisionModelWithProjection": ("clip_vision_model", ("vision",), True),
}
_DEFAULT_ARCHITECTURE = {"clip": "CLIPModel", "clip_text_model": "CLIPTextModel",
                         "clip_vision_model": "CLIPVisionModel"}
_ATTENTION_NAMES = [(r"\.self_attn\.q_proj\.", ".self_attn.to_q."), (r"\.self_attn\.k_proj\.", ".self_attn.to_k."),
                    (r"\.self_attn\.v_proj\.", ".self_attn.to_v."),
                    (r"\.self_attn\.out_proj\.", ".self_attn.to_out.0.")]
_PROJECTIONS = {"text_projection.weight": "text_model.text_projection.weight",
                "visual_projection.weight": "vision_model.visual_projection.weight"}


def parse_config(hf: dict[str, Any], source: str) -> tuple[CLIPConfig, str]:
  """An HF CLIP config.json dict -> (our config, the architecture name)."""
  model_type = hf.get("model_type")
  if model_type not in _DEFAULT_ARCHITECTURE:
    raise ConfigError(source, f"model_type {model_type!r} is not a CLIP model",
                      f"point at a CLIP folder (model_type one of {sorted(_DEFAULT_ARCHITECTURE)})")
  architecture = (hf.get("architectures") or [_DEFAULT_ARCHITECTURE[model_type]])[0]
  if _ARCHITECTURES.get(architecture, (None,))[0] != model_type:
    raise ConfigError(source, f"architecture {architecture!r} (model_type {model_type!r}) is not supported",
                      f"use one of {sorted(_ARCHITECTURES)}")
  _, towers, projected = _ARCHITECTURES[architecture]
  projection_dim = hf.get("projection_dim", _DEFAULT_PROJECTION_DIM) if projected else None
  if model_type != "clip":
    tower_config = (CLIPTextConfig if towers == ("text",) else CLIPVisionConfig).from_hf(
        hf, projection_dim=projection_dim, source=source)
    return CLIPConfig(**{towers[0]: tower_config}), architecture
  # Old OpenAI configs also carry `*_config_dict`, whose values transformers lets win.
  text = {**(hf.get("text_config") or {}), **(hf.get("text_config_dict") or {})}
  vision = {**(hf.get("vision_config") or {}), **(hf.get("vision_config_dict") or {})}
  return CLIPConfig(text=CLIPTextConfig.from_hf(text, projection_dim=projection_dim, source=source),
                    vision=CLIPVisionConfig.from_hf(vision, projection_dim=projection_dim, source=source)), architecture


def param_shapes(config: CLIPConfig) -> dict[str, Any]:
  """{'text_model': ..., 'vision_model': ...} shapes of the towers the config holds, without allocating."""
  shapes = {}
  if config.text is not None:
    ids = jax.ShapeDtypeStruct((1, config.text.max_position_embeddings), jnp.int32)
    shapes["text_model"] = jax.eval_shape(CLIPTextTransformer(config.text).init, jax.random.key(0), ids)
  if config.vision is not None:
    v = config.vision
    pixels = jax.ShapeDtypeStruct((1, v.image_size, v.image_size, v.num_channels), jnp.float32)
    shapes["vision_model"] = jax.eval_shape(CLIPVisionTransformer(v).init, jax.random.key(0), pixels)
  return {k: nn.unbox(v)["params"] for k, v in shapes.items()}


def _renamer(single_tower: str | None, keep: tuple[str, ...]):
  """Source key -> our dotted key, or None for towers not asked for."""
  attention = common.rename_by_rules(_ATTENTION_NAMES)

  def rename(key: str) -> str | None:
    key = _PROJECTIONS.get(key, key)
    if single_tower and not key.startswith(f"{single_tower}_model."):
      key = f"{single_tower}_model.{key}"
    if key.split("_model.", 1)[0] in set(TOWERS) - set(keep):
      return None
    return attention(key)

  return rename


def load_clip(folder: str | os.PathLike, towers: tuple[str, ...] | None = None,
              ) -> tuple[CLIPConfig, dict[str, Any], common.ConversionReport]:
  """Converts an HF CLIP folder.

  Args:
    folder: saved by `save_pretrained` of one of the five CLIP architectures (see the module doc).
    towers: which of 'text', 'vision' to load (a `CLIPModel` holds both); default all the folder has.
  Returns:
    (config with the loaded towers, params {'text_model': ..., 'vision_model': ...} as nested dicts of
    float32 numpy arrays, report). Run them with `clip.encode_text(config.text, params['text_model'],
    ids)` and `clip.encode_image(config.vision, params['vision_model'], pixels)`.
  Raises:
    InputError: config.json or the weights are missing or unreadable (names the file).
    ConfigError: not a supported CLIP model, a tower it lacks was asked for, or tensors whose names
      or shapes do not fit (names the file).
  """
  folder = os.fspath(folder)
  config_path = os.path.join(folder, "config.json")
  config, architecture = parse_config(common.read_json(config_path), config_path)
  available = tuple(t for t in TOWERS if getattr(config, t) is not None)
  towers = available if towers is None else tuple(towers)
  if not towers or set(towers) - set(available):
    raise ConfigError(folder, f"towers {towers} asked of a {architecture}, which holds {available}",
                      f"ask for a non-empty subset of {available}")
  config = CLIPConfig(**{t: getattr(config, t) for t in towers})
  weights = common.find_weights(folder, WEIGHT_STEMS)
  single_tower = available[0] if len(available) == 1 else None
  params, report = common.convert_state_dict(
      common.load_state_dict(weights), param_shapes(config), source=weights,
      rename=_renamer(single_tower, towers),
      allow_unexpected=lambda k: k.endswith("position_ids") or k == "logit_scale")
  return config, params, report
