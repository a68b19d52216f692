"""LoRA (Hu et al. 2021) on dense kernels, in parameter space: W' = W + (alpha / r) A B.

The adapters live beside the model, not in it: `merge(params, adapters)` returns the param tree with
every adapted kernel replaced by W + (alpha / r) A B, so the model code is unchanged, training
differentiates through the merge (gradients reach A and B only) and "LoRA applied onto the base" is
the same function at inference. A kernel W (in, out) gets A (in, r) and B (r, out); B starts at zero,
so a fresh adapter leaves the model's outputs exactly unchanged.

On disk (`save` / `load`): one safetensors file whose keys are '<'/'-joined kernel path>/lora_a' and
'.../lora_b' (stored in float16, as LoRA files usually are: half the size, each number rounded by at
most 2^-11 of itself; `load` returns float32), with metadata {'format': 'vidjax-lora', 'rank', 'alpha'}.
For the toy UNet on the spatial attention projections this is about 18 kB per unit of rank: 589 kB at
`vidjax finetune`'s default rank 32.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from vidjax import tree
from vidjax.errors import ConfigError, InputError, atomic_path, usual_mode

FORMAT = "vidjax-lora"
# Gen-1's customization adapts what reads the content: the spatial transformers' self- and cross-attention
# projections. Temporal attention ('temporal_attentions_*') is left alone: image batches never run it.
SPATIAL_ATTENTION = r".*/attentions_\d+/.*/attn[12]/(to_q|to_k|to_v|to_out_0)/kernel"


def init(params: Mapping[str, Any], pattern: str, rank: int, key: jax.Array) -> dict[str, Any]:
  """Fresh adapters for the 2-D kernels of `params` whose '/'-joined path fully matches `pattern`.

  Returns {'<path>': {'lora_a': (in, r), 'lora_b': (r, out)}} (float32; flat path keys, so the file and the
  tree read the same). A is drawn as He-uniform over `in` (the usual LoRA init), B is zero.
  """
  compiled = re.compile(pattern)
  targets = {"/".join(p): v for p, v in tree.flatten(params).items()
             if compiled.fullmatch("/".join(p)) and np.ndim(v) == 2}
  if not targets:
    raise ConfigError("lora pattern", f"{pattern!r} matches no 2-D kernel of the model",
                      "use a regex over '/'-joined param paths, e.g. the default spatial attention projections")
  if rank < 1 or rank > min(min(v.shape) for v in targets.values()):
    raise ConfigError("lora_rank", f"{rank} is outside [1, the smallest adapted side]", "choose a smaller rank")
  adapters = {}
  for i, (path, kernel) in enumerate(sorted(targets.items())):
    fan_in, fan_out = kernel.shape
    bound = float(np.sqrt(6.0 / fan_in))
    adapters[path] = {"lora_a": jax.random.uniform(jax.random.fold_in(key, i), (fan_in, rank), jnp.float32,
                                                   -bound, bound),
                      "lora_b": jnp.zeros((rank, fan_out), jnp.float32)}
  return adapters


def merge(params: Mapping[str, Any], adapters: Mapping[str, Any], alpha: float) -> dict[str, Any]:
  """`params` with each adapted kernel W replaced by W + (alpha / r) A B (in W's dtype promoted to float32)."""
  flat = tree.flatten(params)
  for path, ab in adapters.items():
    key = tuple(path.split("/"))
    if key not in flat:
      raise ConfigError(f"LoRA adapter {path}", "names a kernel the model does not have",
                        "apply the adapters to the base checkpoint they were trained on")
    a, b = ab["lora_a"], ab["lora_b"]
    flat[key] = jnp.asarray(flat[key], jnp.float32) + (alpha / a.shape[1]) * (a @ b)
  return tree.unflatten(flat)


def save(path: str | os.PathLike, adapters: Mapping[str, Any], alpha: float) -> str:
  """Writes the adapters (float16) to a safetensors file atomically; returns the path."""
  rank = {int(ab["lora_a"].shape[1]) for ab in adapters.values()}
  flat = {f"{path_}/{name}": np.ascontiguousarray(np.asarray(v, np.float16))
          for path_, ab in adapters.items() for name, v in ab.items()}
  with atomic_path(path) as tmp:
    save_file(flat, tmp, metadata={"format": FORMAT, "rank": str(rank.pop()), "alpha": repr(float(alpha))})
    os.chmod(tmp, usual_mode())
  return os.fspath(path)


def load(path: str | os.PathLike) -> tuple[dict[str, Any], float]:
  """(adapters, alpha) from a file written by `save`; InputError if it is missing or not a LoRA file."""
  path = os.fspath(path)
  fix = "point at the lora.safetensors that `vidjax finetune` wrote"
  if not os.path.isfile(path):
    raise InputError(path, "the LoRA file does not exist", fix)
  try:
    with safe_open(path, "numpy") as f:
      metadata = f.metadata() or {}
      flat = {k: f.get_tensor(k) for k in f.keys()}
  except (SafetensorError, OSError, ValueError) as e:
    raise InputError(path, f"not a readable safetensors file ({e})", fix) from e
  if metadata.get("format") != FORMAT:
    raise InputError(path, f"is not a {FORMAT} file (metadata {metadata})", fix)
  adapters: dict[str, dict[str, np.ndarray]] = {}
  for key, value in flat.items():
    kernel, _, name = key.rpartition("/")
    adapters.setdefault(kernel, {})[name] = value.astype(np.float32)
  return adapters, float(metadata["alpha"])
