"""diffusers AutoencoderKL -> vidjax `AutoencoderKL` params.

The linen model mirrors diffusers' module names, so the generic mapping in
`common.convert_state_dict` places every tensor; the only rename rules bring checkpoints saved
before diffusers 0.14 (mid-block attention as query/key/value/proj_attn) to today's names.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vidjax.convert import common
from vidjax.models.vae import AutoencoderKL, VAEConfig

WEIGHT_STEMS = ("diffusion_pytorch_model",)
_DEPRECATED_ATTENTION_NAMES = [(r"\.query\.", ".to_q."), (r"\.key\.", ".to_k."), (r"\.value\.", ".to_v."),
                               (r"\.proj_attn\.", ".to_out.0.")]


def vae_param_shapes(config: VAEConfig) -> dict[str, Any]:
  """The param tree's shapes and dtypes, without allocating it."""
  f = config.downsample_factor
  image = jax.ShapeDtypeStruct((1, f, f, config.in_channels), jnp.float32)
  return nn.unbox(jax.eval_shape(AutoencoderKL(config).init, jax.random.key(0), image))["params"]


def convert_vae(source: str | os.PathLike | Mapping[str, np.ndarray], config: VAEConfig | None = None,
                ) -> tuple[VAEConfig, dict[str, Any], common.ConversionReport]:
  """Converts a diffusers `vae/` folder (config.json + weights) or a state dict.

  Args:
    source: a folder saved by `AutoencoderKL.save_pretrained` (diffusion_pytorch_model.safetensors,
      or .bin), or a state dict (then `config` is required).
    config: the target config; by default read from the folder's config.json.
  Returns:
    (config, params as a nested dict of float32 numpy arrays, report). Every tensor is placed:
    the report's `missing` and `unexpected` are empty.
  Raises:
    InputError: config.json or the weights file is missing or unreadable (names the file).
    ConfigError: unsupported config, or tensors whose names or shapes do not fit (names the file).
  """
  config, state_dict, name = common.read_source(
      source, config, lambda folder: VAEConfig.from_diffusers(common.read_json(os.path.join(folder, "config.json"))),
      WEIGHT_STEMS)
  params, report = common.convert_state_dict(state_dict, vae_param_shapes(config), source=str(name),
                                             rename=common.rename_by_rules(_DEPRECATED_ATTENTION_NAMES))
  return config, params, report
