"""A `vidjax train` run -> a whole-model checkpoint directory (`vidjax convert run WORKDIR OUT`).

`export_run(workdir, out)` writes the EMA weights of the run's latest step with the manifest entries
`vidjax.pipelines.model_dir` reads (scheduler, conditioning, video, training, sampling_defaults) and
the tokenizer as an asset. An image-embedding run exports with Gen-1's prior when one is named
(`prior_from`, `--prior WORKDIR`: a workdir whose prior stage ran; default the run's own
prior_stage/, if it has one): the prior's EMA weights (component `prior`), the CLIP text tower with
its projection that the prior reads (`text_encoder`), the tokenizer, and a `prior` manifest entry
with the mean raw image-embedding norm (`image_embed_norm`, the content scale the UNet was trained
on; see `sampling.prior.PromptPrior`) and the prior stage's held-out figures. `add_run_command` adds
`run` to the `vidjax convert` parser (the CLI composes it; convert does not import train).
"""

from __future__ import annotations

import argparse
import os
from typing import Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from safetensors import safe_open

from vidjax import tree
from vidjax.convert import common, pretrained
from vidjax.convert.pretrained import CONTENTS, STRUCTURES
from vidjax.errors import ConfigError, InputError, is_number
from vidjax.models.build import build_model
from vidjax.models.video_model import DEPTH_NORMALIZATION, ModelConfig
from vidjax.sampling.settings import SAMPLING_DEFAULTS, check_sampling_defaults, parse_setting
from vidjax.train import prior_stage
from vidjax.train.checkpoint import Checkpointer, load_params


def export_run(workdir: str | os.PathLike, out_dir: str | os.PathLike, *, use_ema: bool = True,
               dtype: str | None = None, sampling_defaults: dict[str, float | int] | None = None,
               prior_from: str | os.PathLike | None = None, prior_embed_norm: float | None = None) -> str:
  """Writes the latest step of a `vidjax train` run as a checkpoint directory (atomically).

  Args:
    workdir: the run's workdir (checkpoints/, and the data and tokenizer folders its config names).
    out_dir: the directory to write.
    use_ema: the EMA weights of components that have them (what sampling during training used).
    dtype: store floating weights in this dtype (e.g. 'float16' to halve a shipped checkpoint).
    sampling_defaults: settings the checkpoint recommends (names from SAMPLING_DEFAULTS), e.g. the
      guidance scale that scored best on held-out data; written only when given.
    prior_from: the workdir of a prior stage trained on this run's CLIP (its prior_stage/checkpoints);
      default the run's own, when it has one. Only for image-embedding runs.
    prior_embed_norm: the content scale a prior sample is rescaled to; default the prior stage's
      measured `image_embed_norm` (prior_stage/prior_eval.json).
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
  own_prior = os.path.join(os.fspath(workdir), "prior_stage", "checkpoints")
  if prior_from is None and c.content == "image" and os.path.isdir(own_prior):
    prior_from = workdir
  if prior_from is not None:
    if c.content != "image":
      raise ConfigError("--prior", f"the run at {workdir} is conditioned on text, not CLIP image embeddings",
                        "export a prior only with an image-embedding (Gen-1 content) run")
    prior_parts, prior_entry, tokenizer_dir = prior_components(prior_from, params["image_encoder"], prior_embed_norm)
    components.update(prior_parts)
    extra["prior"] = prior_entry
    assets["tokenizer"] = tokenizer_dir
  if dtype:
    cast = lambda x: np.asarray(x).astype(dtype) if np.issubdtype(np.asarray(x).dtype, np.floating) else x
    components = {k: (cfg, jax.tree.map(cast, p)) for k, (cfg, p) in components.items()}
  return pretrained.save_pretrained(out_dir, components, extra=extra, assets=assets)


def prior_components(prior_workdir: str | os.PathLike, image_encoder: dict, embed_norm: float | None):
  """A prior stage's workdir -> ({'prior', 'text_encoder'} components, the manifest's `prior` entry, tokenizer dir).

  The prior must have been trained on this run's CLIP: the image tower it learnt to predict
  embeddings of is compared with the run's `image_encoder`, parameter by parameter.
  """
  where = f"--prior {prior_workdir}"
  checkpoints = os.path.join(os.fspath(prior_workdir), "prior_stage", "checkpoints")
  missing = InputError(where, f"{checkpoints} holds no finished prior checkpoint",
                       "point --prior at the workdir of a `vidjax train` run whose prior stage ran")
  if not os.path.isdir(checkpoints):  # Orbax would create it
    raise missing
  with Checkpointer(checkpoints, async_save=False) as checkpointer:
    step = checkpointer.latest_step()
    if step is None:
      raise missing
    config = ml_collections.ConfigDict(checkpointer.saved_config(step))
  clip_dir = prior_stage.clip_directory(config, os.fspath(prior_workdir))
  clip = load_params(clip_dir)
  theirs, ours = tree.flatten(nn.unbox(clip["image_encoder"])), tree.flatten(nn.unbox(image_encoder))
  same = theirs.keys() == ours.keys() and all(np.array_equal(np.asarray(theirs[k]), np.asarray(ours[k])) for k in ours)
  if not same:
    raise ConfigError(where, f"its prior was trained on the CLIP at {clip_dir}, whose image tower is not this run's",
                      "train the prior on the run's own CLIP (--config.prior_stage.clip_from=<run>/clip_stage/"
                      "checkpoints)")
  report_path = os.path.join(os.fspath(prior_workdir), "prior_stage", "prior_eval.json")
  report = common.read_json(report_path) if os.path.isfile(report_path) else {}
  if embed_norm is None:
    embed_norm = report.get("image_embed_norm")
    if embed_norm is None:
      raise ConfigError(where, f"{report_path} gives no image_embed_norm (the prior stage ran without its "
                        "held-out figure)", "pass --prior-embed-norm, the mean norm of the run's CLIP image embeddings")
  if not (is_number(embed_norm) and embed_norm > 0):
    raise ConfigError(where, f"image_embed_norm {embed_norm!r} is not a positive number",
                      "pass --prior-embed-norm, the mean norm of the run's CLIP image embeddings")
  prior_config = prior_stage.prior_config(config)
  text_config = prior_stage.Towers(config).text_config
  components = {"prior": (prior_config, load_params(checkpoints, use_ema=True)["prior"]),
                "text_encoder": (text_config, clip["text_encoder"])}
  entry = {"image_embed_norm": float(embed_norm), "workdir": os.path.abspath(prior_workdir), "step": int(step),
           "clip_from": os.path.abspath(clip_dir), "eval": report}
  return components, entry, config.data.tokenizer_dir


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
             sampling_defaults=_sampling_defaults(args.sampling_default or []), prior_from=args.prior,
             prior_embed_norm=args.prior_embed_norm)
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
  run.add_argument("--prior", metavar="WORKDIR", default=None,
                   help="add Gen-1's text -> image-embedding prior trained in this workdir's prior stage, on the "
                   "run's CLIP, with that CLIP's text tower and the tokenizer (default: the run's own prior stage, "
                   "if it ran; image-embedding runs only)")
  run.add_argument("--prior-embed-norm", type=float, metavar="NORM", default=None,
                   help="the content scale prior samples are rescaled to (default: the mean CLIP image-embedding "
                   "norm the prior stage measured, prior_stage/prior_eval.json)")
