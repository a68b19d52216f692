"""Sampling settings: one name per knob, the checkpoint defaults they take, and the one NAME=VALUE parser.

The knobs are named as in the API, the CLI (dashes for underscores), configs and JSON sidecars:
`structure_fidelity`, `guidance_scale`, `temporal_guidance_scale`, `num_inference_steps`, `eta`,
`seed`, `strength`, `temporal_window`, and for image-embedding models prompted through Gen-1's prior
`prior_guidance_scale`, `prior_num_inference_steps` (the prior's own DDIM) and `content_mix`. Older
names (`temporal_guidance`, `steps`) are read as aliases where users already have them: command-line
flags and sweeps, and manifests' sampling_defaults.
"""

from __future__ import annotations

from typing import Any, Mapping

from vidjax.errors import ConfigError, InputError, is_number

# The sampling settings a checkpoint may recommend, with the values used where it does not.
# The prior's: guidance 1 scored best on the toy prior's held-out scenes (configs/prior_toy.py), and
# DALL-E 2 samples its prior in 64 steps.
SAMPLING_DEFAULTS = {"guidance_scale": 5.0, "temporal_guidance_scale": 1.0, "num_inference_steps": 25, "eta": 0.0,
                     "prior_guidance_scale": 1.0, "prior_num_inference_steps": 64}
# The knobs that take numbers, with their type (what `--sweep` and `--sampling-default` parse).
NUMERIC_SETTINGS = {"structure_fidelity": int, "guidance_scale": float, "temporal_guidance_scale": float,
                    "num_inference_steps": int, "eta": float, "seed": int, "strength": float, "temporal_window": int,
                    "prior_guidance_scale": float, "prior_num_inference_steps": int, "content_mix": float}
# Old name -> the one name.
ALIASES = {"temporal_guidance": "temporal_guidance_scale", "steps": "num_inference_steps"}


def canonical_name(name: str) -> str:
  """'temporal-guidance' or 'temporal_guidance' -> 'temporal_guidance_scale'; other names as snake_case."""
  name = name.strip().lower().replace("-", "_")
  return ALIASES.get(name, name)


def check_sampling_defaults(values: Any, where: str) -> dict[str, float | int]:
  """`values` as a sampling_defaults entry: known names (or their aliases), numbers (an int for the step count).

  Returns them under their one name. Raises ConfigError naming `where` (the manifest or the flag that gave them).
  """
  if not isinstance(values, Mapping):
    raise ConfigError(where, f"sampling_defaults is {values!r}, not a mapping", "give {name: value}")
  unknown = sorted(name for name in values if canonical_name(name) not in SAMPLING_DEFAULTS)
  if unknown:
    raise ConfigError(where, f"unknown sampling defaults {unknown}", f"use names from {sorted(SAMPLING_DEFAULTS)}")
  checked = {}
  for name, value in values.items():
    name = canonical_name(name)
    kind = type(SAMPLING_DEFAULTS[name])
    if not is_number(value) or (kind is int and value != int(value)):
      wanted = "an integer" if kind is int else "a finite number"
      raise ConfigError(where, f"sampling default {name} = {value!r} is not {wanted}",
                        f"give a number like {SAMPLING_DEFAULTS[name]!r}")
    checked[name] = kind(value)
  return checked


def parse_setting(text: str, where: str, names: Mapping[str, type] | None = NUMERIC_SETTINGS
                  ) -> tuple[str, list[int | float]]:
  """The one NAME=VALUE[,VALUE...] parser: 'temporal-guidance=0.5,1' -> ('temporal_guidance_scale', [0.5, 1.0]).

  Names may use dashes and the old aliases; values parse as the setting's type in `names` (None: any
  name, numbers; the caller checks the name). Raises InputError naming `where` (the flag) and the part
  that is wrong.
  """
  name, sep, values = text.partition("=")
  name = canonical_name(name)
  if not sep or not name:
    raise InputError(f"{where} {text}", "is not a setting and its values (NAME=V1,V2,...)",
                     "e.g. temporal_guidance_scale=0.5,1,1.5")
  if names is not None and name not in names:
    raise InputError(f"{where} {name}", "is not a setting that can be given here", f"use one of {', '.join(names)}")
  kind, parsed = float if names is None else names[name], []
  for value in values.split(","):
    try:
      parsed.append(kind(value.strip()))
    except ValueError:
      what = "integers" if kind is int else "numbers"
      raise InputError(f"{where} {name}", f"value {value.strip()!r} is not one of the {what} it takes",
                       f"pass comma-separated {what}, e.g. {name}=1,2") from None
  return name, parsed
