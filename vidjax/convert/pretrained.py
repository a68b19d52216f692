"""The vidjax checkpoint directory: converted (or trained) weights ready for inference and `--init_from`.

Layout (format_version 1):

  <dir>/config.json               the manifest, see below
  <dir>/<component>.safetensors   one per component: the param tree flattened to '/'-joined paths
                                  ('down_blocks_0/resnets_1/conv1/kernel'), in the stored dtype
  <dir>/<asset>/                  folders copied verbatim (e.g. tokenizer/: vocab.json, merges.txt, ...)

config.json:

  {"format": "vidjax-pretrained", "format_version": 1, "vidjax_version": "0.1.0",
   "components": {"unet": {"class": "UNetConfig", "config": {...}, "weights": "unet.safetensors"}, ...},
   "assets": ["tokenizer"],
   ... extra keys written by the converter, e.g.
   "scheduler": {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                 "beta_end": 0.012, "prediction_type": "epsilon", "timestep_spacing": "leading",
                 "steps_offset": 1, "set_alpha_to_one": false, ...},
   "conditioning": {"structure": "depth_1ch", "content": "text_tokens", "text_output": "last_hidden_state", ...}}

A config is the model's frozen dataclass as a dict; a nested dataclass field (DPTConfig.bit) is
written as {"class": ..., "config": {...}} too, and JSON lists come back as tuples. Fields a
newer vidjax adds take their defaults when an older directory is read. The directory is written
to a temporary sibling and renamed, so a failed conversion leaves no directory behind.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import numpy as np

import vidjax
from vidjax import tree
from vidjax.convert import common, diffusers_unet, diffusers_vae, hf_clip, hf_dpt
from vidjax.errors import ConfigError, InputError, atomic_path, usual_mode
from vidjax.models.clip import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from vidjax.models.depth import DepthEstimator
from vidjax.models.dpt_backbone import BitConfig, DPTConfig
from vidjax.models.i3d import I3DConfig
from vidjax.models.i3d import param_shapes as i3d_param_shapes
from vidjax.models.prior import PriorConfig
from vidjax.models.prior import param_shapes as prior_param_shapes
from vidjax.models.unet import UNetConfig
from vidjax.models.vae import VAEConfig

FORMAT = "vidjax-pretrained"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
_RESERVED = ("format", "format_version", "vidjax_version", "components", "assets")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
CONFIG_CLASSES = {cls.__name__: cls for cls in (UNetConfig, VAEConfig, CLIPConfig, CLIPTextConfig, CLIPVisionConfig,
                                                DPTConfig, BitConfig, I3DConfig, PriorConfig)}
_FIX = "convert again with `vidjax convert ...`, or point at a directory written by save_pretrained"


_SHAPES: dict[type, Callable[[Any], dict[str, Any]]] = {
    UNetConfig: diffusers_unet.unet_param_shapes, VAEConfig: diffusers_vae.vae_param_shapes,
    DPTConfig: hf_dpt.dpt_param_shapes, CLIPConfig: hf_clip.param_shapes, I3DConfig: i3d_param_shapes,
    PriorConfig: prior_param_shapes,
    CLIPTextConfig: lambda c: hf_clip.param_shapes(CLIPConfig(text=c))["text_model"],
    CLIPVisionConfig: lambda c: hf_clip.param_shapes(CLIPConfig(vision=c))["vision_model"]}


# Manifest `conditioning` entries <-> VideoDiffusionModel's structure and content kinds.
STRUCTURES = {"depth_1ch": "depth", "depth_pixels": "depth_pixels", "depth_latent": "depth_latent", "none": "none"}
CONTENTS = {"text_tokens": "text", "image_embeds": "image"}


def param_shapes(config: Any) -> dict[str, Any]:
  """The param tree (of `jax.ShapeDtypeStruct`) that a component config's model expects, without allocating it.

  Cached per config (the frozen config dataclasses are hashable): each load of a checkpoint asks for
  its components' shapes, and `eval_shape` traces the model's init for them (2-3 s for the toy UNet).
  The caller gets its own containers.
  """
  return jax.tree.map(lambda leaf: leaf, _cached_shapes(config))


@functools.lru_cache(maxsize=16)
def _cached_shapes(config: Any) -> dict[str, Any]:
  return _SHAPES[type(config)](config)


def encode_config(config: Any) -> dict[str, Any]:
  """A registered config dataclass -> {"class": name, "config": JSON-able fields}."""
  name = type(config).__name__
  if CONFIG_CLASSES.get(name) is not type(config):
    raise TypeError(f"{name} is not a registered config class ({sorted(CONFIG_CLASSES)})")
  encode = lambda v: encode_config(v) if dataclasses.is_dataclass(v) else v
  return {"class": name, "config": {f.name: encode(getattr(config, f.name)) for f in dataclasses.fields(config)}}


def decode_config(entry: Any, source: str) -> Any:
  """The inverse of `encode_config`; ConfigError naming `source` for unknown classes or fields."""
  if not isinstance(entry, Mapping) or entry.get("class") not in CONFIG_CLASSES or not isinstance(
      entry.get("config"), Mapping):
    raise ConfigError(source, f"config entry {str(entry)[:80]!r} has no known 'class' and 'config'",
                      f"classes are {sorted(CONFIG_CLASSES)}; {_FIX}")
  cls = CONFIG_CLASSES[entry["class"]]
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(entry["config"]) - known)
  if unknown:
    raise ConfigError(source, f"{cls.__name__} has no fields {unknown} (written by a newer vidjax?)",
                      "upgrade vidjax, or convert the source again with this version")

  def decode(value):
    if isinstance(value, Mapping) and "class" in value:
      return decode_config(value, source)
    return tuple(decode(v) for v in value) if isinstance(value, list) else value

  return cls(**{k: decode(v) for k, v in entry["config"].items()})


def save_pretrained(out_dir: str | os.PathLike, components: Mapping[str, tuple[Any, Mapping[str, Any]]], *,
                    extra: Mapping[str, Any] | None = None,
                    assets: Mapping[str, str | os.PathLike] | None = None) -> str:
  """Writes a checkpoint directory atomically (replacing an existing one only on success).

  Args:
    out_dir: the directory to create.
    components: name -> (config dataclass, param tree of numpy/jax arrays); names become file names.
    extra: JSON-able top-level manifest entries (scheduler, conditioning, source, ...).
    assets: name -> a folder copied verbatim to `out_dir/name` (e.g. the tokenizer).
  Returns:
    out_dir as a string.
  """
  from safetensors.numpy import save_file

  extra, assets = dict(extra or {}), dict(assets or {})
  names = list(components) + list(assets)
  bad = [n for n in names if not _NAME.match(n)] + sorted(set(extra) & set(_RESERVED))
  if bad or len(set(names)) != len(names):
    raise ValueError(f"component/asset names must be unique file-name-safe words, and extra must not use "
                     f"{_RESERVED}; got {bad or names}")
  manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "vidjax_version": vidjax.__version__,
              "components": {}, "assets": sorted(assets), **extra}
  with atomic_path(out_dir, is_dir=True) as tmp:
    for name, (config, params) in components.items():
      weights = f"{name}.safetensors"
      # Trained params may still carry logical-partitioning boxes; the file stores plain arrays.
      flat = tree.flatten(nn.unbox(params))
      save_file({"/".join(p): np.ascontiguousarray(np.asarray(v)) for p, v in flat.items()},
                os.path.join(tmp, weights), metadata={"format": FORMAT, "component": name})
      os.chmod(os.path.join(tmp, weights), usual_mode())  # safetensors creates owner-only files
      manifest["components"][name] = {**encode_config(config), "weights": weights}
    for name, folder in assets.items():
      if not os.path.isdir(folder):
        raise InputError(str(folder), f"the {name} folder does not exist", "point at the source checkpoint's folder")
      shutil.copytree(folder, os.path.join(tmp, name))
    with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
      json.dump(manifest, f, indent=2, sort_keys=False)
      f.write("\n")
  return os.fspath(out_dir)


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
  """The validated config.json of a checkpoint directory (components, assets and the extra entries)."""
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise InputError(path, "not a vidjax checkpoint directory (it does not exist)", _FIX)
  manifest = common.read_json(os.path.join(path, CONFIG_FILE))
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    raise InputError(os.path.join(path, CONFIG_FILE), f"is not a {FORMAT} manifest",
                     f"{_FIX} (diffusers folders convert with `vidjax convert sd2-depth`)")
  version = manifest.get("format_version")
  if not isinstance(version, int) or version > FORMAT_VERSION:
    raise ConfigError(path, f"format_version {version!r} is newer than this vidjax reads ({FORMAT_VERSION})",
                      "upgrade vidjax")
  if not isinstance(manifest.get("components"), dict) or not manifest["components"]:
    raise InputError(os.path.join(path, CONFIG_FILE), "lists no components", _FIX)
  missing = [a for a in manifest.get("assets", []) if not os.path.isdir(os.path.join(path, a))]
  if missing:
    raise InputError(path, f"asset folders {missing} are missing", _FIX)
  return manifest


def load_pretrained(path: str | os.PathLike, names: tuple[str, ...] | None = None, *,
                    check_shapes: bool = True) -> dict[str, tuple[Any, dict[str, Any]]]:
  """Reads components of a checkpoint directory.

  Args:
    path: a directory written by `save_pretrained`.
    names: the components to load (default all), e.g. ('unet',) for `--init_from`.
    check_shapes: compare every param's path and shape with the model its config builds.
  Returns:
    name -> (config dataclass, nested dict of numpy arrays in their stored dtype).
  Raises:
    InputError: a missing directory, manifest or weights file, or an unreadable one.
    ConfigError: an unknown component, config class or field, or params that do not fit the config.
  """
  from safetensors import SafetensorError
  from safetensors.numpy import load_file

  path = os.fspath(path)
  manifest = read_manifest(path)
  available = manifest["components"]
  names = tuple(available) if names is None else tuple(names)
  unknown = [n for n in names if n not in available]
  if unknown:
    raise ConfigError(path, f"has no components {unknown}", f"choose from {sorted(available)}")
  out = {}
  for name in names:
    entry = available[name]
    config = decode_config(entry, f"{path}: {name}")
    weights = os.path.join(path, os.path.basename(str(entry.get("weights", ""))))  # never outside the directory
    if not os.path.isfile(weights):
      raise InputError(weights, f"the {name} weights file is missing", _FIX)
    try:
      flat = load_file(weights)
    except (SafetensorError, OSError, ValueError) as e:
      raise InputError(weights, f"not a readable safetensors file ({e})", _FIX) from e
    params = tree.unflatten({tuple(k.split("/")): v for k, v in flat.items()})
    if check_shapes:
      _check_shapes(params, param_shapes(config), weights)
    out[name] = (config, params)
  return out


def _check_shapes(params: Mapping[str, Any], shapes: Mapping[str, Any], source: str) -> None:
  have, want = tree.flatten(params), tree.flatten(shapes)
  problems = [f"missing {'/'.join(p)}" for p in want if p not in have]
  problems += [f"unexpected {'/'.join(p)}" for p in have if p not in want]
  problems += [f"{'/'.join(p)} {have[p].shape} != {tuple(want[p].shape)}" for p in want
               if p in have and tuple(have[p].shape) != tuple(want[p].shape)]
  if problems:
    raise ConfigError(source, f"{len(problems)} params do not fit the config: " + "; ".join(problems[:10]), _FIX)


def load_depth_estimator(path: str | os.PathLike, **kwargs) -> DepthEstimator:
  """A `DepthEstimator` from a vidjax directory with a depth_estimator component (its manifest's
  `depth_estimator_kwargs` apply) or from a transformers DPT folder; `kwargs` override those."""
  path = os.fspath(path)
  if os.path.isfile(os.path.join(path, CONFIG_FILE)):
    manifest = read_manifest(path)
    if "depth_estimator" in manifest["components"]:
      config, params = load_pretrained(path, ("depth_estimator",))["depth_estimator"]
      return DepthEstimator(config, params, **{**manifest.get("depth_estimator_kwargs", {}), **kwargs})
  return hf_dpt.load_depth_estimator(path, **kwargs)
