"""PyTorch `InceptionI3d` state dicts (piergiaj's layout) -> vidjax I3D params.

The FVD weights most code uses are `i3d_pretrained_400.pt` (Kinetics-400, from TATS; cd-fvd and
StyleGAN-V's protocol score its logits): a plain torch state dict with keys such as
`Conv3d_1a_7x7.conv3d.weight`, `Mixed_4b.b1b.bn.running_var` and `logits.conv3d.bias`. `load_i3d`
reads it (torch files need PyTorch; a safetensors copy of the same keys does not).

`vidjax convert i3d i3d_pretrained_400.pt OUT` writes the vidjax checkpoint directory (one component,
`i3d`) that `vidjax evaluate`'s FVD/KVD protocols read as `--config.i3d_dir=OUT`.

Names: modules and convs keep their names; a batch norm's `weight`/`bias` become `scale`/`bias` and its
running statistics the frozen params `mean`/`var`. `num_batches_tracked` counters have no place and are
reported as unexpected; anything else unplaced, missing or of another shape is refused.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from vidjax.convert import common
from vidjax.models.i3d import I3DConfig, param_shapes

_STEM_WIDTH = 64  # Conv3d_1a_7x7's output channels in the real I3D
_RENAMES = [(r"\.bn\.running_mean$", ".bn.mean"), (r"\.bn\.running_var$", ".bn.var")]


def convert_i3d(state_dict: Mapping[str, np.ndarray], config: I3DConfig | None = None, *, source: str = "state dict",
                ) -> tuple[dict[str, Any], common.ConversionReport]:
  """An `InceptionI3d` state dict (numpy arrays) -> (params for `I3D(config)`, report).

  `config` defaults to what the state dict holds: the logits layer's classes (400 for Kinetics-400)
  and the width (the stem's 64 output channels, or 64 / channel_divisor for a narrow test network).
  Raises ConfigError naming every shape mismatch, missing param and unplaceable key.
  """
  if config is None:
    config = infer_config(state_dict)
  return common.convert_state_dict(state_dict, param_shapes(config), source=source,
                                   rename=common.rename_by_rules(_RENAMES),
                                   allow_unexpected=lambda k: k.endswith("num_batches_tracked"))


def infer_config(state_dict: Mapping[str, np.ndarray]) -> I3DConfig:
  """The I3DConfig whose shapes a state dict's logits bias and stem kernel have (defaults for absent keys)."""
  bias, stem = state_dict.get("logits.conv3d.bias"), state_dict.get("Conv3d_1a_7x7.conv3d.weight")
  num_classes = I3DConfig().num_classes if bias is None else int(np.shape(bias)[0])
  stem_width = _STEM_WIDTH if stem is None else int(np.shape(stem)[0])
  divisor = _STEM_WIDTH // stem_width if 0 < stem_width and _STEM_WIDTH % stem_width == 0 else 1
  # Another width is not an I3D: the real one's shapes then make the converter name the mismatch.
  return I3DConfig(num_classes=num_classes, channel_divisor=divisor if divisor in (1, 2, 4, 8) else 1)


def load_i3d(path: str | os.PathLike, config: I3DConfig | None = None,
             ) -> tuple[I3DConfig, dict[str, Any], common.ConversionReport]:
  """Reads an I3D weights file (.safetensors, or a torch .pt/.pth/.bin) -> (config, params, report).

  Run the params with `vidjax.models.i3d.i3d_features(config, params, preprocess_videos(videos))`.
  Raises InputError for a missing or unreadable file, ConfigError for tensors that do not fit.
  """
  path = os.fspath(path)
  state_dict = common.load_state_dict(path)
  config = infer_config(state_dict) if config is None else config
  params, report = convert_i3d(state_dict, config, source=path)
  return config, params, report
