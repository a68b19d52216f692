"""A vidjax checkpoint directory <-> a ready-to-run `VideoDiffusionModel`, and training runs -> such a directory.

`load_model_dir(path)` reads any directory written by `vidjax.convert.pretrained.save_pretrained` that
holds a whole model (unet + vae + text_encoder or image_encoder, optionally depth_estimator): the
converters' stable-diffusion-2-depth and Make-Your-Video outputs, and `export_run`'s trained models.
The manifest entries it reads (all written by those tools):

  scheduler       num_train_timesteps, beta_schedule, beta_start, beta_end, prediction_type,
                  timestep_spacing, steps_offset, set_alpha_to_one (diffusers' scheduler fields)
  conditioning    structure 'depth_1ch' | 'depth_pixels' | 'depth_latent' | 'none';
                  content 'text_tokens' | 'image_embeds'
  video           num_frames (trained clip length), temporal_window (L_M; null = the whole past),
                  and for trained runs fps, stride and size [H, W]
  training        structure_fidelity_range [min, max] (the t_s the model saw), and the run's facts
  sampling_defaults
                  optional: the settings of SAMPLING_DEFAULTS this checkpoint samples best with
                  (chosen on held-out data when it was exported; transformers' generation_config),
                  used where a call leaves them unset

`export_run(workdir, out)` turns a `vidjax train` workdir into such a directory: EMA weights of the
latest (or a given) step, the tokenizer as an asset, and the entries above from the run's saved config.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable

import ml_collections
import numpy as np

from vidjax.convert import common, pretrained
from vidjax.errors import ConfigError, InputError
from vidjax.models.video_model import ModelConfig, VideoDiffusionModel

STRUCTURES = {"depth_1ch": "depth", "depth_pixels": "depth_pixels", "depth_latent": "depth_latent", "none": "none"}
CONTENTS = {"text_tokens": "text", "image_embeds": "image"}
_MODEL_PARTS = ("unet", "vae", "text_encoder", "image_encoder")
# The sampling settings a checkpoint may recommend, with the values used where it does not.
SAMPLING_DEFAULTS = {"guidance_scale": 5.0, "temporal_guidance": 1.0, "num_inference_steps": 25, "eta": 0.0}


@dataclasses.dataclass(frozen=True)
class ModelDir:
  """Everything an inference pipeline needs from a checkpoint directory.

  tokenizer: prompts (list[str]) -> int32 (B, L) ids (a `vidjax.data.loader.Tokenizer`: its `losses(prompts)` say
    what tokenizing changes or drops), or None for image-conditioned models.
  depth_estimator: (config, params) of a bundled DPT, or None.
  """

  path: str
  model: VideoDiffusionModel
  params: dict[str, Any]
  tokenizer: Callable[[list[str]], np.ndarray] | None
  manifest: dict[str, Any]
  depth_estimator: tuple[Any, Any] | None = None

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


def check_sampling_defaults(values: Any, where: str) -> dict[str, float | int]:
  """`values` as a sampling_defaults entry: known names, numbers (an int for the step count).

  Raises ConfigError naming `where` (the manifest or the flag that gave them).
  """
  if not isinstance(values, dict):
    raise ConfigError(where, f"sampling_defaults is {values!r}, not a mapping", "give {name: value}")
  unknown = sorted(set(values) - set(SAMPLING_DEFAULTS))
  if unknown:
    raise ConfigError(where, f"unknown sampling defaults {unknown}", f"use names from {sorted(SAMPLING_DEFAULTS)}")
  checked = {}
  for name, value in values.items():
    kind = type(SAMPLING_DEFAULTS[name])
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or (kind is int and value != int(value)):
      wanted = "an integer" if kind is int else "a finite number"
      raise ConfigError(where, f"sampling default {name} = {value!r} is not {wanted}",
                        f"give a number like {SAMPLING_DEFAULTS[name]!r}")
    checked[name] = kind(value)
  return checked


def _tokenizer(path: str, context_length: int) -> Callable[[list[str]], np.ndarray]:
  from vidjax.data.loader import Tokenizer  # transformers' AutoTokenizer: CLIP BPE folders and the toy vocabulary
  return Tokenizer(path, context_length)


def load_model_dir(path: str | os.PathLike) -> ModelDir:
  """Reads a whole-model checkpoint directory (see the module docstring).

  Raises:
    InputError / ConfigError naming the directory: not a checkpoint, a component missing, or a manifest
    entry this vidjax does not understand.
  """
  path = os.fspath(path)
  manifest = pretrained.read_manifest(path)
  conditioning = manifest.get("conditioning", {})
  structure = STRUCTURES.get(conditioning.get("structure", "depth_1ch"))
  content = CONTENTS.get(conditioning.get("content", "text_tokens"))
  if structure is None or content is None:
    raise ConfigError(os.path.join(path, pretrained.CONFIG_FILE), f"conditioning {conditioning} is unknown",
                      f"structure must be one of {sorted(STRUCTURES)} and content one of {sorted(CONTENTS)}")
  check_sampling_defaults(manifest.get("sampling_defaults", {}), os.path.join(path, pretrained.CONFIG_FILE))
  needed = ("unet", "vae", "text_encoder" if content == "text" else "image_encoder")
  missing = [name for name in needed if name not in manifest["components"]]
  if missing:
    raise InputError(path, f"holds no {missing} (components: {sorted(manifest['components'])})",
                     "point at a whole-model directory (vidjax convert sd2-depth / make-your-video, or "
                     "vidjax convert run)")
  names = tuple(n for n in (*_MODEL_PARTS, "depth_estimator") if n in manifest["components"])
  loaded = pretrained.load_pretrained(path, names)
  tokenizer, null_tokens = None, ()
  if content == "text":
    if "tokenizer" not in manifest.get("assets", []):
      raise InputError(path, "a text-conditioned model without a tokenizer/ folder", "convert it with its tokenizer")
    tokenizer = _tokenizer(os.path.join(path, "tokenizer"), loaded["text_encoder"][0].max_position_embeddings)
    null_tokens = tuple(int(i) for i in tokenizer([""])[0])
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
                  manifest=manifest, depth_estimator=loaded.get("depth_estimator"))


def export_run(workdir: str | os.PathLike, out_dir: str | os.PathLike, *, use_ema: bool = True,
               dtype: str | None = None, sampling_defaults: dict[str, float | int] | None = None) -> str:
  """Writes the latest step of a `vidjax train` run as a checkpoint directory (atomically).

  Args:
    workdir: the run's workdir (checkpoints/, and the data and tokenizer folders its config names).
    out_dir: the directory to write.
    use_ema: the EMA weights of components that have them (what sampling during training used).
    dtype: store floating weights in this dtype (e.g. 'float16' to halve a shipped checkpoint).
    sampling_defaults: settings the checkpoint recommends (names from SAMPLING_DEFAULTS), e.g. the
      guidance scale that scored best on held-out data; written only when given.
  Returns:
    out_dir.
  """
  import jax

  from vidjax.train.checkpoint import Checkpointer, load_params

  sampling_defaults = check_sampling_defaults(sampling_defaults or {}, "sampling_defaults")
  from vidjax.train.loop import build_model

  checkpoints = os.path.join(os.fspath(workdir), "checkpoints")
  with Checkpointer(checkpoints, async_save=False) as checkpointer:
    step = checkpointer.latest_step()
    if step is None:
      raise InputError(checkpoints, "holds no finished checkpoint", "point at the workdir of a `vidjax train` run")
    config = ml_collections.ConfigDict(checkpointer.saved_config(step))
  model, params = build_model(config), load_params(checkpoints, use_ema=use_ema)
  c, data = model.config, config.data
  clips = common.read_json(os.path.join(data.data_dir, "manifest.json"))  # the shards' frame count, stride, size
  components = {"unet": (c.unet, params["unet"]), "vae": (c.vae, params["vae"])}
  tower = "text_encoder" if c.content == "text" else "image_encoder"
  components[tower] = (getattr(c, tower), params[tower])
  if dtype:
    cast = lambda x: np.asarray(x).astype(dtype) if np.issubdtype(np.asarray(x).dtype, np.floating) else x
    components = {k: (cfg, jax.tree.map(cast, p)) for k, (cfg, p) in components.items()}
  extra = {
      "source": {"kind": "vidjax-train", "workdir": os.path.abspath(workdir), "step": int(step)},
      "scheduler": {"num_train_timesteps": c.num_train_timesteps, "beta_schedule": c.beta_schedule,
                    "beta_start": c.beta_start, "beta_end": c.beta_end, "prediction_type": c.prediction_type,
                    "timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False},
      "conditioning": {"structure": {v: k for k, v in STRUCTURES.items()}[c.structure],
                       "content": {v: k for k, v in CONTENTS.items()}[c.content],
                       "depth_normalization": "per_frame_minmax", "text_output": "last_hidden_state"},
      # Trained without a window: causal attention over all of a clip's frames, so L_M = num_frames.
      "video": {"num_frames": int(clips["num_frames"]), "temporal_window": None, "stride": clips.get("stride"),
                "size": [clips.get("height"), clips.get("width")]},
      "training": {"structure_fidelity_range": [int(data.structure_fidelity_min), int(data.structure_fidelity_max)],
                   "steps": int(step), "image_fraction": float(data.image_fraction), "data": clips.get("source")},
  }
  if sampling_defaults:
    extra["sampling_defaults"] = sampling_defaults
  assets = {"tokenizer": data.tokenizer_dir} if c.content == "text" else {}
  return pretrained.save_pretrained(out_dir, components, extra=extra, assets=assets)
