"""A vidjax checkpoint directory -> a ready-to-run `VideoDiffusionModel` (`load_model_dir`).

`load_model_dir(path)` reads any directory written by `vidjax.convert.pretrained.save_pretrained` that
holds a whole model (unet + vae + text_encoder or image_encoder, optionally depth_estimator): the
converters' stable-diffusion-2-depth and Make-Your-Video outputs, and trained runs exported by
`vidjax.train.export.export_run` (`vidjax convert run`), and the LoRA outputs of `vidjax finetune`
(a folder with finetune.json: its base checkpoint is loaded, then `load_lora` applies it).
The manifest entries it reads (all written by those tools):

  scheduler       num_train_timesteps, beta_schedule, beta_start, beta_end, prediction_type,
                  timestep_spacing, steps_offset, set_alpha_to_one (diffusers' scheduler fields)
  conditioning    structure 'depth_1ch' | 'depth_pixels' | 'depth_latent' | 'none';
                  content 'text_tokens' | 'image_embeds'; depth_normalization (optional) must be
                  what the model applies (`video_model.DEPTH_NORMALIZATION`)
  video           num_frames (trained clip length), temporal_window (L_M; null = the whole past),
                  and for trained runs fps, stride and size [H, W]
  training        structure_fidelity_range [min, max] (the t_s the model saw), and the run's facts
  prior           optional, with the components prior (PriorConfig), text_encoder (its CLIP text
                  tower with projection) and the tokenizer/ asset, for an image-embedding model:
                  image_embed_norm, the scale prior samples are rescaled to (`PromptPrior`)
  sampling_defaults
                  optional: the settings of SAMPLING_DEFAULTS this checkpoint samples best with
                  (chosen on held-out data when it was exported; transformers' generation_config),
                  used where a call leaves them unset
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable

import numpy as np
from safetensors.numpy import load_file

from vidjax import toyworld, tree
from vidjax.conditioning.tokens import Tokenizer
from vidjax.convert import pretrained
from vidjax.convert.pretrained import CONTENTS, STRUCTURES
from vidjax.errors import ConfigError, InputError, is_number
from vidjax.models.video_model import DEPTH_NORMALIZATION, ModelConfig, VideoDiffusionModel
from vidjax.sampling.prior import PromptPrior
from vidjax.sampling.settings import SAMPLING_DEFAULTS, check_sampling_defaults  # noqa: F401 (part of this API)
from vidjax.train import lora

_MODEL_PARTS = ("unet", "vae", "text_encoder", "image_encoder")
# A `vidjax finetune --mode lora` output: adapters, the grown token table and tokenizer, naming its base.
LORA_MANIFEST = "finetune.json"
_TOKEN_TABLE = ("embeddings", "token_embedding", "embedding")


@dataclasses.dataclass(frozen=True)
class ModelDir:
  """Everything an inference pipeline needs from a checkpoint directory.

  tokenizer: prompts (list[str]) -> int32 (B, L) ids (a `vidjax.conditioning.tokens.Tokenizer`: its
    `losses(prompts)` say what tokenizing changes or drops), or None for image-conditioned models
    without a prior.
  depth_estimator: (config, params) of a bundled DPT, or None.
  prior: Gen-1's text -> image-embedding prior with its text tower, for image-conditioned models
    whose directory holds one (prompts then become image content), else None.
  """

  path: str
  model: VideoDiffusionModel
  params: dict[str, Any]
  tokenizer: Callable[[list[str]], np.ndarray] | None
  manifest: dict[str, Any]
  depth_estimator: tuple[Any, Any] | None = None
  prior: PromptPrior | None = None

  @property
  def scheduler(self) -> dict[str, Any]:
    return self.manifest.get("scheduler", {})

  @property
  def video(self) -> dict[str, Any]:
    return self.manifest.get("video", {})

  @property
  def structure_fidelity_range(self) -> tuple[int, int]:
    low, high = self.manifest.get("training", {}).get("structure_fidelity_range", (0, 0))
    return int(low), int(high)

  @property
  def sampling_defaults(self) -> dict[str, float | int]:
    """SAMPLING_DEFAULTS with the checkpoint's own recommendations in place."""
    where = os.path.join(self.path, pretrained.CONFIG_FILE)
    return {**SAMPLING_DEFAULTS, **check_sampling_defaults(self.manifest.get("sampling_defaults", {}), where)}


def _tokenizer(path: str, context_length: int) -> Callable[[list[str]], np.ndarray]:
  return Tokenizer(path, context_length)  # transformers' AutoTokenizer: CLIP BPE folders and the toy vocabulary


def load_model_dir(path: str | os.PathLike) -> ModelDir:
  """Reads a whole-model checkpoint directory (see the module docstring).

  Raises:
    InputError / ConfigError naming the directory: not a checkpoint, a component missing, or a manifest
    entry this vidjax does not understand.
  """
  path = os.fspath(path)
  if os.path.isfile(os.path.join(path, LORA_MANIFEST)) and not os.path.isfile(os.path.join(path, pretrained.CONFIG_FILE)):
    return _load_lora_dir(path)
  manifest = pretrained.read_manifest(path)
  conditioning = manifest.get("conditioning", {})
  structure = STRUCTURES.get(conditioning.get("structure", "depth_1ch"))
  content = CONTENTS.get(conditioning.get("content", "text_tokens"))
  if structure is None or content is None:
    raise ConfigError(os.path.join(path, pretrained.CONFIG_FILE), f"conditioning {conditioning} is unknown",
                      f"structure must be one of {sorted(STRUCTURES)} and content one of {sorted(CONTENTS)}")
  check_sampling_defaults(manifest.get("sampling_defaults", {}), os.path.join(path, pretrained.CONFIG_FILE))
  stated, applied = conditioning.get("depth_normalization"), DEPTH_NORMALIZATION[structure]
  if stated is not None and structure != "none" and stated != applied:  # absent: older manifests, the model's own
    raise ConfigError(os.path.join(path, pretrained.CONFIG_FILE),
                      f"conditioning.depth_normalization is {stated!r}, but vidjax normalises {structure!r} depth "
                      f"{applied!r}, as training does", f"use a checkpoint trained with {applied!r} depth (for a "
                      f"vidjax training run, re-export it with `vidjax convert run`)")
  needed = ("unet", "vae", "text_encoder" if content == "text" else "image_encoder")
  missing = [name for name in needed if name not in manifest["components"]]
  if missing:
    raise InputError(path, f"holds no {missing} (components: {sorted(manifest['components'])})",
                     "point at a whole-model directory (vidjax convert sd2-depth / make-your-video, or "
                     "vidjax convert run)")
  names = tuple(n for n in (*_MODEL_PARTS, "depth_estimator", "prior") if n in manifest["components"])
  loaded = pretrained.load_pretrained(path, names)
  tokenizer, null_tokens, prior = None, (), None
  if content == "text":
    if "tokenizer" not in manifest.get("assets", []):
      raise InputError(path, "a text-conditioned model without a tokenizer/ folder", "convert it with its tokenizer")
    tokenizer = _tokenizer(os.path.join(path, "tokenizer"), loaded["text_encoder"][0].max_position_embeddings)
    null_tokens = tuple(int(i) for i in tokenizer([""])[0])
  elif "prior" in loaded:
    prior = _prompt_prior(path, manifest, loaded)
    tokenizer = _tokenizer(os.path.join(path, "tokenizer"), prior.max_text_tokens)
  scheduler = manifest.get("scheduler", {})
  config = ModelConfig(
      unet=loaded["unet"][0], vae=loaded["vae"][0],
      text_encoder=loaded["text_encoder"][0] if content == "text" else None,
      image_encoder=loaded["image_encoder"][0] if content == "image" else None,
      structure=structure, content=content, null_tokens=null_tokens,
      prediction_type=scheduler.get("prediction_type", "epsilon"),
      beta_schedule=scheduler.get("beta_schedule", "scaled_linear"),
      beta_start=float(scheduler.get("beta_start", 0.00085)), beta_end=float(scheduler.get("beta_end", 0.012)),
      num_train_timesteps=int(scheduler.get("num_train_timesteps", 1000)))
  params = {name: loaded[name][1] for name in _MODEL_PARTS if name in loaded and name in needed}
  return ModelDir(path=path, model=VideoDiffusionModel(config), params=params, tokenizer=tokenizer,
                  manifest=manifest, depth_estimator=loaded.get("depth_estimator"), prior=prior)


def _prompt_prior(path: str, manifest: dict[str, Any], loaded: dict[str, Any]) -> PromptPrior:
  """The `prior` component with its text tower, tokenizer and content scale, checked against each other."""
  where = os.path.join(path, pretrained.CONFIG_FILE)
  fix = "export the run again with `vidjax convert run WORKDIR OUT --prior PRIOR_WORKDIR`"
  if "text_encoder" not in loaded or "tokenizer" not in manifest.get("assets", []):
    raise InputError(path, "holds a prior but not the CLIP text tower (text_encoder) and tokenizer/ it reads", fix)
  (prior_config, prior_params), (text_config, text_params) = loaded["prior"], loaded["text_encoder"]
  image_dim = loaded["image_encoder"][0].projection_dim
  if not (prior_config.embed_dim == text_config.projection_dim == image_dim
          and prior_config.text_width == text_config.hidden_size
          and prior_config.max_text_tokens <= text_config.max_position_embeddings):
    raise ConfigError(where, f"the prior (embed_dim {prior_config.embed_dim}, text_width {prior_config.text_width}, "
                      f"{prior_config.max_text_tokens} tokens) does not fit its text tower (projection "
                      f"{text_config.projection_dim}, width {text_config.hidden_size}, "
                      f"{text_config.max_position_embeddings} positions) and the image tower ({image_dim})", fix)
  norm = manifest.get("prior", {}).get("image_embed_norm")
  if not (is_number(norm) and norm > 0):
    raise ConfigError(where, f"prior.image_embed_norm is {norm!r}, not the positive content scale of the image "
                      "embeddings", fix)
  return PromptPrior(prior_config, prior_params, text_config, text_params, float(norm))


def _read_lora_manifest(path: str) -> dict[str, Any]:
  where = os.path.join(path, LORA_MANIFEST)
  try:
    with open(where, encoding="utf-8") as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    raise InputError(where, f"not a readable JSON manifest ({e})", "point at a folder `vidjax finetune` wrote") from e
  if not isinstance(manifest, dict) or manifest.get("format") != "vidjax-finetune" or manifest.get("mode") != "lora":
    raise InputError(where, "is not a vidjax-finetune LoRA manifest", "point at a folder `vidjax finetune` wrote")
  return manifest


def lora_base(path: str | os.PathLike) -> str:
  """The base checkpoint directory a `vidjax finetune --mode lora` folder was trained on."""
  manifest = _read_lora_manifest(os.fspath(path))
  if manifest.get("base_is_embedded"):  # the package may have moved since
    return toyworld.CHECKPOINT
  return manifest["base"]


def load_lora(base_params: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
  """The fine-tuned params: `base_params` ({'unet', 'text_encoder', ...} of the base checkpoint) with the
  LoRA adapters of `path` merged into the UNet (W + alpha / r A B, float32) and the text encoder's token
  table replaced by the grown one (one more row per added token)."""
  path = os.fspath(path)
  manifest = _read_lora_manifest(path)
  adapters, alpha = lora.load(os.path.join(path, os.path.basename(manifest["lora"]["file"])))
  table_file = os.path.join(path, os.path.basename(manifest["token_embedding"]))
  if not os.path.isfile(table_file):
    raise InputError(table_file, "the token table is missing", "copy the whole `vidjax finetune` output folder")
  table = next(iter(load_file(table_file).values()))
  params = dict(base_params)
  params["unet"] = lora.merge(base_params["unet"], adapters, alpha)
  flat = tree.flatten(base_params["text_encoder"])
  flat[_TOKEN_TABLE] = table
  params["text_encoder"] = tree.unflatten(flat)
  return params


def _load_lora_dir(path: str) -> ModelDir:
  """A LoRA folder: its base through `load_model_dir`, the adapters and token table by `load_lora`."""
  manifest = _read_lora_manifest(path)
  base_path = lora_base(path)
  base = load_model_dir(base_path)
  with open(os.path.join(base_path, "unet.safetensors"), "rb") as f:
    if hashlib.sha256(f.read()).hexdigest() != manifest.get("base_unet_sha256"):
      raise ConfigError(path, f"was trained on another version of its base {base_path} (the unet differs)",
                        "fine-tune again on this base, or restore the base it names")
  params = load_lora(base.params, path)
  config = base.model.config
  config = dataclasses.replace(config, text_encoder=dataclasses.replace(
      config.text_encoder, vocab_size=int(params["text_encoder"]["embeddings"]["token_embedding"]["embedding"].shape[0])))
  tokenizer = _tokenizer(os.path.join(path, "tokenizer"), config.text_encoder.max_position_embeddings)
  return dataclasses.replace(base, path=path, model=VideoDiffusionModel(config), params=params, tokenizer=tokenizer,
                             manifest={**base.manifest, "finetune": manifest,
                                       "sampling_defaults": {**base.manifest.get("sampling_defaults", {}),
                                                             **manifest.get("sampling_defaults", {})}})
