"""transformers `DPTForDepthEstimation` folders (Intel/dpt-large, Intel/dpt-hybrid-midas) -> DPT params.

A folder holds config.json and model.safetensors (or pytorch_model.bin), as save_pretrained
writes it. Our module names follow transformers' keys except where `_RENAME` says otherwise; keys
transformers stores but its depth forward never reads are dropped (`_UNUSED_BY_DEPTH`).
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vidjax.convert import common
from vidjax.errors import ConfigError
from vidjax.models.depth import DPT, DepthEstimator, DPTConfig

_RENAME = common.rename_by_rules([
    # the ViT attention is the shared `Attention` (to_q, to_k, to_v, to_out_0)
    (r"\.attention\.attention\.query\.", ".attention.to_q."),
    (r"\.attention\.attention\.key\.", ".attention.to_k."),
    (r"\.attention\.attention\.value\.", ".attention.to_v."),
    (r"\.attention\.output\.dense\.", ".attention.to_out.0."),
    (r"\.(intermediate|output)\.dense\.", r".\1."),
    (r"\.patch_embeddings\.projection\.", ".patch_embeddings."),
    # BiT and the fusion stage are flattened into fewer module levels
    (r"\.backbone\.bit\.embedder\.", ".backbone.embedder_"),
    (r"\.backbone\.bit\.encoder\.stages\.(\d+)\.layers\.(\d+)\.", r".backbone.stages_\1_layers_\2."),
    (r"\.downsample\.(conv|norm)\.", r".downsample_\1."),
    (r"\.fusion_stage\.layers\.", ".fusion_stage_layers."),
])
# The final ViT layernorm and pooler act on the last hidden state, which depth does not read; the
# first fusion layer has no skip input, so its residual_layer1 is never called.
_UNUSED_BY_DEPTH = re.compile(r"^dpt\.(layernorm|pooler)\.|^neck\.fusion_stage\.layers\.0\.residual_layer1\.")


def rename(key: str) -> str | None:
  """A transformers DPT state-dict key -> our dotted key, or None for keys depth never reads."""
  return None if _UNUSED_BY_DEPTH.search(key) else _RENAME(key)


def dpt_param_shapes(config: DPTConfig) -> dict[str, Any]:
  """The param tree's shapes and dtypes, without allocating it."""
  pixels = jax.ShapeDtypeStruct((1, *config.image_size, config.num_channels), jnp.float32)
  return nn.unbox(jax.eval_shape(DPT(config).init, jax.random.key(0), pixels))["params"]


def read_dpt_config(folder: str, **overrides) -> DPTConfig:
  """The folder's config.json as a DPTConfig; ConfigError if it is not a DPT depth model."""
  hf = common.read_json(os.path.join(folder, "config.json"))
  architectures = hf.get("architectures") or ["DPTForDepthEstimation"]
  if hf.get("model_type") != "dpt" or "DPTForDepthEstimation" not in architectures:
    raise ConfigError(folder, f"holds a {hf.get('model_type')!r} model ({', '.join(architectures)}), not DPT depth",
                      "point at a DPTForDepthEstimation folder such as Intel/dpt-hybrid-midas or Intel/dpt-large")
  return DPTConfig.from_hf(hf, **overrides)


def convert_dpt(source: str | os.PathLike | Mapping[str, np.ndarray], config: DPTConfig | None = None,
                **config_overrides) -> tuple[DPTConfig, dict[str, Any], common.ConversionReport]:
  """Converts a transformers DPT depth folder (or a state dict with its `config`).

  Args:
    source: a folder with config.json and model.safetensors / pytorch_model.bin, or a state dict.
    config: the target config; by default read from config.json with `config_overrides` applied
      (e.g. dtype='bfloat16', attention_backend='cudnn').
  Returns:
    (config, params as a nested numpy dict, report).
  Raises:
    InputError for a missing folder, config or weights file, or an unreadable file; ConfigError for
    a non-DPT config or weights that do not fit it (every mismatch listed).
  """
  config, state_dict, name = common.read_source(
      source, config, lambda folder: read_dpt_config(folder, **config_overrides), ["model", "pytorch_model"])
  params, report = common.convert_state_dict(state_dict, dpt_param_shapes(config), source=str(name), rename=rename)
  return config, params, report


def load_depth_estimator(folder: str | os.PathLike, **kwargs) -> DepthEstimator:
  """A `DepthEstimator` on a transformers DPT folder (config.json + model.safetensors or pytorch_model.bin).

  `kwargs` go to `DepthEstimator` (batch_size, image_size, multiple, keep_aspect_ratio). Also the
  shard builder's 'dpt' depth method (`data_pipelines.depth_estimators`).
  """
  config, params, _ = convert_dpt(folder)
  return DepthEstimator(config, params, **kwargs)
