"""Sampling settings: the names a checkpoint's `sampling_defaults` may use, and their checks."""

from __future__ import annotations

import math
from typing import Any

from vidjax.errors import ConfigError

# The sampling settings a checkpoint may recommend, with the values used where it does not.
SAMPLING_DEFAULTS = {"guidance_scale": 5.0, "temporal_guidance": 1.0, "num_inference_steps": 25, "eta": 0.0}


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

