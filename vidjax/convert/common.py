"""The one conversion helper: PyTorch-style state dicts -> vidjax param trees.

Every converter (diffusers UNet/VAE, HF CLIP/DPT, Make-Your-Video) is a `rename` function from
source keys to vidjax keys plus a call to `convert_state_dict`, which
  * maps 'a.0.b.weight' to the path ('a_0', 'b', 'kernel' | 'scale' | 'embedding'),
  * transposes kernels by rank (linear (O, I) -> (I, O); conv (O, I, *taps) -> (*taps, I, O);
    a 1x1 conv into a Dense kernel),
  * asserts every shape against the target tree (from `jax.eval_shape` of the model's init),
  * reports missing and unexpected keys, and refuses what it cannot place.
Weights load from local files only: safetensors (preferred, no torch needed) or torch files read
with `weights_only=True`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from vidjax.errors import ConfigError, InputError
from vidjax.tree import Path, flatten, unflatten  # noqa: F401 (also re-exported: the tests use common.flatten)

_TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a safetensors or torch weights file (or a sharded index .json) into numpy float32 arrays."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise InputError(path, "weights file not found", "pass the path of a .safetensors, .bin or .ckpt file")
  if path.endswith(".json"):
    return _load_sharded(path)
  if path.endswith(".safetensors"):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
      tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
      raise InputError(path, f"not a readable safetensors file ({e})", "re-download or re-export the file") from e
    return {k: _to_float32(v) for k, v in tensors.items()}
  if path.endswith(_TORCH_SUFFIXES):
    return _load_torch(path)
  raise InputError(path, "unknown weights format", "use .safetensors (preferred) or a torch .bin/.pt/.ckpt file")


def find_weights(folder: str | os.PathLike, stems: Iterable[str]) -> str:
  """The weights file of a diffusers/HF component folder, safetensors first, then index, then torch."""
  folder = os.fspath(folder)
  stems = tuple(stems)
  for stem in stems:
    for suffix in (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json"):
      candidate = os.path.join(folder, stem + suffix)
      if os.path.isfile(candidate):
        return candidate
  raise InputError(folder, f"no weights file ({', '.join(s + '.safetensors' for s in stems)} or .bin)",
                   "point at a diffusers/HF component folder saved with save_pretrained")


def read_source(source: str | os.PathLike | Mapping[str, np.ndarray], config: Any,
                load_config: Callable[[str], Any], weight_stems: Iterable[str]) -> tuple[Any, Mapping[str, np.ndarray], str]:
  """(config, state dict, name for messages) from a component folder or an in-memory state dict.

  A folder's config is `load_config(folder)` unless `config` is given; a state dict needs `config`.
  """
  if isinstance(source, Mapping):
    if config is None:
      raise ValueError("config is required when converting a state dict")
    return config, source, "state dict"
  folder = os.fspath(source)
  if not os.path.isdir(folder):
    raise InputError(folder, "not a folder", "point at a component folder saved with save_pretrained")
  config = config if config is not None else load_config(folder)
  name = find_weights(folder, weight_stems)
  return config, load_state_dict(name), name


def read_json(path: str | os.PathLike) -> dict[str, Any]:
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise InputError(path, "file not found", "point at a folder saved with save_pretrained (it has config.json)")
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise InputError(path, f"not valid JSON ({e})", "restore the file from the original checkpoint") from e


def _load_sharded(index_path: str) -> dict[str, np.ndarray]:
  index = read_json(index_path)
  folder = os.path.dirname(index_path)
  out: dict[str, np.ndarray] = {}
  for shard in sorted(set(index.get("weight_map", {}).values())):
    out.update(load_state_dict(os.path.join(folder, shard)))
  return out


def _load_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise InputError(path, "reading torch files needs PyTorch", "pip install torch, or convert to safetensors") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for corrupt or pickled-code files.
    raise InputError(path, f"not a loadable torch weights file ({type(e).__name__}: {e})",
                     "re-download the file; files that need arbitrary pickled code are refused") from e
  if isinstance(obj, Mapping) and "state_dict" in obj:  # Lightning checkpoints
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise InputError(path, f"holds a {type(obj).__name__}, not a state dict", "save model.state_dict()")
  return {k: _to_float32(v.float().numpy()) for k, v in obj.items() if hasattr(v, "numpy")}


def _to_float32(x: np.ndarray) -> np.ndarray:
  return np.asarray(x, dtype=np.float32) if x.dtype != np.float32 and x.dtype.kind == "f" else np.asarray(x)


def key_to_path(key: str) -> Path:
  """'down_blocks.0.resnets.1.conv1.weight' -> ('down_blocks_0', 'resnets_1', 'conv1', 'weight')."""
  parts: list[str] = []
  for part in key.split("."):
    if part.isdigit() and parts:
      parts[-1] = f"{parts[-1]}_{part}"
    else:
      parts.append(part)
  return tuple(parts)


def _leaf_candidates(path: Path) -> list[Path]:
  *head, leaf = path
  names = {"weight": ("kernel", "scale", "embedding"), "gamma": ("scale",), "beta": ("bias",)}.get(leaf, (leaf,))
  return [tuple(head) + (name,) for name in names]


def _adapt(value: np.ndarray, leaf: str, shape: tuple[int, ...]) -> np.ndarray | None:
  """The source tensor laid out as the target leaf, or None if no rule fits."""
  if leaf == "kernel":
    if value.ndim == 2:
      value = value.T
    elif value.ndim >= 3:  # conv (O, I, *taps) -> (*taps, I, O)
      value = np.transpose(value, tuple(range(2, value.ndim)) + (1, 0))
      if len(shape) == 2 and value.shape[:-2] == (1,) * (value.ndim - 2):  # 1x1 conv into Dense
        value = value.reshape(value.shape[-2:])
  return value if value.shape == tuple(shape) else None


@dataclasses.dataclass
class ConversionReport:
  """What a conversion placed, left at init, and could not place."""

  converted: list[str]
  missing: list[str]  # target params with no source (left at their init value)
  unexpected: list[str]  # source keys with no target (all allowed by `allow_unexpected`, or it raises)

  def summary(self) -> str:
    return (f"converted {len(self.converted)} tensors; {len(self.missing)} target params left at init; "
            f"{len(self.unexpected)} source keys unused")


def convert_state_dict(state_dict: Mapping[str, np.ndarray], target: Mapping[str, Any], *, source: str,
                       rename: Callable[[str], str | None] = lambda k: k,
                       init_params: Mapping[str, Any] | None = None,
                       allow_missing: Callable[[Path], bool] = lambda p: False,
                       allow_unexpected: Callable[[str], bool] = lambda k: False,
                       ) -> tuple[dict[str, Any], ConversionReport]:
  """Places a state dict into a param tree.

  Args:
    state_dict: source key -> array.
    target: the param tree's shapes (e.g. `jax.eval_shape(model.init, ...)['params']`), leaves with `.shape`.
    source: a name for error messages (the file or folder).
    rename: source key -> vidjax dotted key (digits after a dot join the previous segment), or None to drop it.
    init_params: values for params the source lacks (e.g. fresh temporal layers); required if any are allowed missing.
    allow_missing: which target paths may be absent from the source (they keep `init_params` values).
    allow_unexpected: which source keys may be left unused (e.g. buffers such as position_ids).
  Returns:
    (params as nested dict of numpy arrays, report).
  Raises:
    ConfigError listing every shape mismatch, disallowed missing param and unused source key.
  """
  targets = flatten(target)
  placed: dict[Path, np.ndarray] = {}
  unexpected, mismatched = [], []
  for key, value in state_dict.items():
    new_key = rename(key)
    if new_key is None:
      continue
    candidates = [p for p in _leaf_candidates(key_to_path(new_key)) if p in targets]
    if not candidates:
      unexpected.append(key)
      continue
    path = candidates[0]
    adapted = _adapt(np.asarray(value), path[-1], tuple(targets[path].shape))
    if adapted is None:
      mismatched.append(f"{key} {tuple(np.shape(value))} -> {'/'.join(path)} {tuple(targets[path].shape)}")
      continue
    placed[path] = adapted.astype(targets[path].dtype)
  missing = [p for p in targets if p not in placed]
  bad_missing = ["/".join(p) for p in missing if not allow_missing(p)]
  problems = []
  if mismatched:
    problems.append("shape mismatches: " + "; ".join(mismatched[:20]))
  if bad_missing:
    problems.append(f"{len(bad_missing)} params missing from the source: " + ", ".join(bad_missing[:20]))
  bad_unexpected = [k for k in unexpected if not allow_unexpected(k)]
  if bad_unexpected:
    problems.append(f"{len(bad_unexpected)} source keys have no place: " + ", ".join(bad_unexpected[:20]))
  if problems:
    raise ConfigError(source, "does not match the model it is converted into (" + " | ".join(problems) + ")",
                      "check that the model config matches the checkpoint (channels, heads, layers, in_channels)")
  if missing:
    if init_params is None:
      raise ValueError("init_params is required when params may be missing")
    init_flat = flatten(init_params)
    placed.update({p: np.asarray(init_flat[p]) for p in missing})
  report = ConversionReport(converted=sorted(k for k in state_dict if rename(k) is not None and k not in unexpected),
                            missing=["/".join(p) for p in missing], unexpected=unexpected)
  return unflatten(placed), report


def rename_by_rules(rules: Iterable[tuple[str, str]]) -> Callable[[str], str]:
  """A rename function applying regex substitutions in order."""
  compiled = [(re.compile(pattern), repl) for pattern, repl in rules]

  def rename(key: str) -> str:
    for pattern, repl in compiled:
      key = pattern.sub(repl, key)
    return key

  return rename
