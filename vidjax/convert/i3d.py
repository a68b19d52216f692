"""PyTorch `InceptionI3d` state dicts (piergiaj's layout) -> vidjax I3D params.

The FVD weights most code uses are `i3d_pretrained_400.pt` (Kinetics-400, from TATS; cd-fvd and
StyleGAN-V's protocol score its logits): a plain torch state dict with keys such as
`Conv3d_1a_7x7.conv3d.weight`, `Mixed_4b.b1b.bn.running_var` and `logits.conv3d.bias`. `load_i3d`
reads it (torch files need PyTorch; a safetensors copy of the same keys does not).

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

_RENAMES = [(r"\.bn\.running_mean$", ".bn.mean"), (r"\.bn\.running_var$", ".bn.var")]


def convert_i3d(state_dict: Mapping[str, np.ndarray], config: I3DConfig | None = None, *, source: str = "state dict",
                ) -> tuple[dict[str, Any], common.ConversionReport]:
  """An `InceptionI3d` state dict (numpy arrays) -> (params for `I3D(config)`, report).

  `config` defaults to the classes the logits layer holds (400 for Kinetics-400).
  Raises ConfigError naming every shape mismatch, missing param and unplaceable key.
  """
  if config is None:
    bias = state_dict.get("logits.conv3d.bias")
    config = I3DConfig() if bias is None else I3DConfig(num_classes=int(np.shape(bias)[0]))
  return common.convert_state_dict(state_dict, param_shapes(config), source=source,
                                   rename=common.rename_by_rules(_RENAMES),
                                   allow_unexpected=lambda k: k.endswith("num_batches_tracked"))


def load_i3d(path: str | os.PathLike, config: I3DConfig | None = None,
             ) -> tuple[I3DConfig, dict[str, Any], common.ConversionReport]:
  """Reads an I3D weights file (.safetensors, or a torch .pt/.pth/.bin) -> (config, params, report).

  Run the params with `vidjax.models.i3d.i3d_features(config, params, preprocess_videos(videos))`.
  Raises InputError for a missing or unreadable file, ConfigError for tensors that do not fit.
  """
  path = os.fspath(path)
  state_dict = common.load_state_dict(path)
  params, report = convert_i3d(state_dict, config, source=path)
  num_classes = params["logits"]["conv3d"]["bias"].shape[0]
  return I3DConfig(num_classes=num_classes), params, report
