"""One name per knob: `vidjax edit --help`, the pipeline's signature, EditSettings and the sidecar agree."""

from __future__ import annotations

import inspect
import json
import re

import pytest

import tiny_model_dir
from vidjax import cli
from vidjax.pipelines.edit import EditSettings, VideoEditPipeline
from vidjax.sampling.settings import NUMERIC_SETTINGS, SAMPLING_DEFAULTS

KNOBS = ("structure_fidelity", "guidance_scale", "temporal_guidance_scale", "num_inference_steps", "temporal_window")


def _help_flags(capsys) -> set[str]:
  with pytest.raises(SystemExit) as exit_:
    cli.main(["edit", "--help"])
  assert exit_.value.code == 0
  return set(re.findall(r"(?<![\w-])--([a-z][a-z-]*)", capsys.readouterr().out))


def test_help_signature_settings_and_sidecar_use_one_name_per_knob(tmp_path, capsys):
  fields = list(EditSettings().as_dict())
  parameters = inspect.signature(VideoEditPipeline.__call__).parameters
  signature = [name for name in parameters if name not in ("self", "progress")]
  assert signature == fields
  flags = _help_flags(capsys)
  missing = [name for name in fields if name.replace("_", "-") not in flags]
  assert not missing, f"settings without a `vidjax edit` flag of the same name: {missing}"
  assert set(KNOBS) <= set(fields) and set(SAMPLING_DEFAULTS) <= set(fields) and set(NUMERIC_SETTINGS) <= set(fields)
  # The old flags stay as aliases of the same settings, not as settings of their own.
  assert {"temporal-guidance", "steps"} <= flags and not {"temporal_guidance", "steps"} & set(fields)

  out = tmp_path / "out.mp4"
  folder = tiny_model_dir.write(tmp_path / "model")
  assert cli.main(["edit", "--checkpoint", folder, "--prompt", "a red cube on a plain floor at night", "--steps", "1",
                   "--temporal-guidance", "1.5", "--no-progress", "--out", str(out)]) == 0
  settings = json.loads((tmp_path / "out.json").read_text())["settings"]
  assert set(fields) <= set(settings), f"sidecar lacks {sorted(set(fields) - set(settings))}"
  assert not {"temporal_guidance", "steps", "temporal_scale"} & set(settings)
  assert settings["temporal_guidance_scale"] == 1.5 and settings["num_inference_steps"] == 1  # the aliases' values
