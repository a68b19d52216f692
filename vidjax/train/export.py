"""A `vidjax train` run -> a whole-model checkpoint directory (`vidjax convert run WORKDIR OUT`).

`export_run(workdir, out)` writes the EMA weights of the run's latest step with the manifest entries
`vidjax.pipelines.model_dir` reads (scheduler, conditioning, video, training, sampling_defaults) and
the tokenizer as an asset. `add_run_command` adds `run` to the `vidjax convert` parser (the CLI
composes it; convert does not import train).
"""

from __future__ import annotations

import argparse
import os
from typing import Callable

import jax
import ml_collections
import numpy as np

from vidjax.convert import common, pretrained
from vidjax.convert.pretrained import CONTENTS, STRUCTURES
from vidjax.errors import InputError
from vidjax.models.build import build_model
from vidjax.models.video_model import DEPTH_NORMALIZATION, ModelConfig
from vidjax.sampling.settings import SAMPLING_DEFAULTS, check_sampling_defaults, parse_setting
from vidjax.train.checkpoint import Checkpointer, load_params


def export_run(workdir: str | os.PathLike, out_dir: str | os.PathLike, *, use_ema: bool = True,
               dtype: str | None = None, sampling_defaults: dict[str, float | int] | None = None) -> str:
  """Writes the latest step of a `vidjax train` run as a checkpoint directory (atomically).

  Args:
    workdir: the run's workdir (checkpoints/, and the data and tokenizer folders its config names).
    out_dir: the directory to write.
    use_ema: the EMA weights of components that have them (what sampling during training used).
    dtype: store floating weights in this dtype (e.g. 'float16' to halve a shipped checkpoint).
    sampling_defaults: settings the checkpoint recommends (names from SAMPLING_DEFAULTS), e.g. the
      guidance scale that scored best on held-out data; written only when given.
  Returns:
    out_dir.
  """
  sampling_defaults = check_sampling_defaults(sampling_defaults or {}, "sampling_defaults")
  checkpoints = os.path.join(os.fspath(workdir), "checkpoints")
  with Checkpointer(checkpoints, async_save=False) as checkpointer:
    step = checkpointer.latest_step()
    if step is None:
      raise InputError(checkpoints, "holds no finished checkpoint", "point at the workdir of a `vidjax train` run")
    config = ml_collections.ConfigDict(checkpointer.saved_config(step))
  model, params = build_model(config), load_params(checkpoints, use_ema=use_ema)
  c, data = model.config, config.data
  clips = common.read_json(os.path.join(data.data_dir, "manifest.json"))  # the shards' frame count, stride, size
  components = {"unet": (c.unet, params["unet"]), "vae": (c.vae, params["vae"])}
  tower = "text_encoder" if c.content == "text" else "image_encoder"
  components[tower] = (getattr(c, tower), params[tower])
  if dtype:
    cast = lambda x: np.asarray(x).astype(dtype) if np.issubdtype(np.asarray(x).dtype, np.floating) else x
    components = {k: (cfg, jax.tree.map(cast, p)) for k, (cfg, p) in components.items()}
  extra = {
      "source": {"kind": "vidjax-train", "workdir": os.path.abspath(workdir), "step": int(step)},
      "scheduler": {"num_train_timesteps": c.num_train_timesteps, "beta_schedule": c.beta_schedule,
                    "beta_start": c.beta_start, "beta_end": c.beta_end, "prediction_type": c.prediction_type,
                    "timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False},
      "conditioning": conditioning_entry(c),
      # Trained without a window: causal attention over all of a clip's frames, so L_M = num_frames.
      "video": {"num_frames": int(clips["num_frames"]), "temporal_window": None, "stride": clips.get("stride"),
                "size": [clips.get("height"), clips.get("width")]},
      "training": {"structure_fidelity_range": [int(data.structure_fidelity_min), int(data.structure_fidelity_max)],
                   "steps": int(step), "image_fraction": float(data.image_fraction), "data": clips.get("source")},
  }
  if sampling_defaults:
    extra["sampling_defaults"] = sampling_defaults
  assets = {"tokenizer": data.tokenizer_dir} if c.content == "text" else {}
  return pretrained.save_pretrained(out_dir, components, extra=extra, assets=assets)


def conditioning_entry(c: ModelConfig) -> dict[str, str | None]:
  """The manifest's `conditioning` entry: structure, content, and the depth normalisation the model
  applies (`DEPTH_NORMALIZATION`: per clip for 'depth_latent', per frame for 'depth' and 'depth_pixels')."""
  return {"structure": {v: k for k, v in STRUCTURES.items()}[c.structure],
          "content": {v: k for k, v in CONTENTS.items()}[c.content],
          "depth_normalization": DEPTH_NORMALIZATION[c.structure], "text_output": "last_hidden_state"}


def _sampling_defaults(texts: list[str]) -> dict[str, float]:
  """--sampling-default NAME=VALUE flags -> {name: value}, through the one NAME=VALUE parser (`export_run`
  then refuses names that are not sampling defaults)."""
  values = {}
  for text in texts:
    name, parsed = parse_setting(text, "--sampling-default", None)  # names: check_sampling_defaults
    if len(parsed) != 1:
      raise InputError(f"--sampling-default {text}", "gives several values", "give one value per setting")
    values[name] = parsed[0]
  return values


def _run(args: argparse.Namespace) -> dict[str, common.ConversionReport]:
  export_run(args.src, args.out, use_ema=not args.no_ema, dtype=args.dtype,
             sampling_defaults=_sampling_defaults(args.sampling_default or []))
  from safetensors import safe_open

  reports = {}
  for name, entry in pretrained.read_manifest(args.out)["components"].items():
    with safe_open(os.path.join(args.out, entry["weights"]), "np") as f:
      reports[name] = common.ConversionReport(converted=list(f.keys()), missing=[], unexpected=[])
  return reports


def add_run_command(command: Callable[..., argparse.ArgumentParser]) -> None:
  """Adds `run` through `vidjax.convert.cli`'s `command(name, run, help, src_help)` factory."""
  run = command("run", _run, "export a `vidjax train` run (EMA weights of its latest step) for inference",
                "the run's workdir")
  run.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="store floating weights in this dtype (default: as trained)")
  run.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
  run.add_argument("--sampling-default", action="append", metavar="NAME=VALUE",
                   help="a setting the checkpoint recommends, used where an edit leaves it unset (repeatable; "
                   f"NAME: {', '.join(SAMPLING_DEFAULTS)})")
