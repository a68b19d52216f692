"""diffusers UNet2DConditionModel -> VideoUNet params.

The VideoUNet mirrors diffusers' module names, so the only mapping is the generic one in
`common.convert_state_dict`. Temporal layers do not exist in image checkpoints: they are reported
as missing and keep their init (zero output projections), so the converted video model equals the
image model frame by frame until trained.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import numpy as np

from vidjax import tree
from vidjax.convert import common
from vidjax.models import layers
from vidjax.models.unet import UNetConfig, VideoUNet, init_inputs


def is_temporal(path: common.Path) -> bool:
  return any(part.startswith("temporal_") for part in path)


def unet_param_shapes(config: UNetConfig) -> dict[str, Any]:
  """The param tree's shapes and dtypes, without allocating it."""
  variables = jax.eval_shape(VideoUNet(config).init, jax.random.key(0), **init_inputs(config))
  return nn.unbox(variables)["params"]


def init_unet_params(config: UNetConfig, seed: int = 0, *,
                     where: Callable[[common.Path], bool] = lambda path: True) -> dict[str, Any]:
  """Fresh params, only those whose path `where` accepts (the same values as in the whole tree).

  The filter runs inside the jit, so XLA drops the other params' initializers: compiling an init
  costs per param (the tiny test UNet's 861 params: ~20 s of CPU), and a converted video model
  needs only its temporal layers'.
  """
  def init(key):
    params = nn.unbox(VideoUNet(config).init(key, **init_inputs(config)))["params"]
    return tree.unflatten({path: value for path, value in tree.flatten(params).items() if where(path)})

  return jax.jit(init)(layers.init_key(jax.random.key(seed)))


def convert_unet(source: str | os.PathLike | Mapping[str, np.ndarray], config: UNetConfig | None = None, *,
                 seed: int = 0, **config_overrides) -> tuple[UNetConfig, dict[str, Any], common.ConversionReport]:
  """Converts a diffusers `unet/` folder (config.json + weights) or a state dict.

  Args:
    source: a diffusers UNet folder, or a state dict (then `config` is required).
    config: the target config; by default read from the folder's config.json with `config_overrides`
      applied (e.g. temporal_conv='pseudo3d' to build a video UNet around image weights).
    seed: init seed for params the checkpoint lacks (temporal layers).
  Returns:
    (config, params as nested numpy dict, report).
  """
  config, state_dict, name = common.read_source(
      source, config, lambda folder: UNetConfig.from_diffusers(
          common.read_json(os.path.join(folder, "config.json")), **config_overrides), ["diffusion_pytorch_model"])
  shapes = unet_param_shapes(config)
  needs_init = any(is_temporal(p) for p in tree.flatten(shapes))
  params, report = common.convert_state_dict(
      state_dict, shapes, source=str(name), allow_missing=is_temporal,
      init_params=init_unet_params(config, seed, where=is_temporal) if needs_init else None)
  return config, params, report
