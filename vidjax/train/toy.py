"""The toy world's part of the main job: data on the fly, the VAE stage, and the final benchmark.

Everything here is driven by `configs/toy.py` and runs on a fresh machine with nothing downloaded.
"""

from __future__ import annotations

import json
import os
import re

import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from vidjax import toyworld
from vidjax.conditioning.tokens import tokenize
from vidjax.data import shards, video_io
from vidjax.data.loader import Loader
from vidjax.data.sources import ClipSpec, ToySource
from vidjax.errors import EXIT_OK, ConfigError, write_json
from vidjax.eval import toy_edit
from vidjax.models.build import build_model
from vidjax.models.video_model import VideoDiffusionModel
from vidjax.sampling import generate
from vidjax.train import vae_stage
from vidjax.train.checkpoint import load_params


def ensure_data(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, str]:
  """Builds the toy shards and tokenizer unless they are complete; returns (data_dir, tokenizer_dir).

  They go where config.data.data_dir / tokenizer_dir say, or under `workdir` when those are empty
  (the config is input only: the caller points the next stages at what this returns).
  """
  build = config.data.build
  data_dir = config.data.data_dir or os.path.join(workdir, "data")
  tokenizer_dir = config.data.tokenizer_dir or os.path.join(workdir, "tokenizer")
  if not os.path.exists(os.path.join(tokenizer_dir, "tokenizer.json")):
    toyworld.save_tokenizer(tokenizer_dir)
  if not os.path.exists(os.path.join(data_dir, "manifest.json")):
    if build.source != "toy":
      raise ConfigError("data.build.source", f"{build.source!r}: the main job builds toy shards only",
                        "use 'toy', or build other data with `vidjax build-shards` and set data.data_dir")
    spec = shards.BuildSpec(ToySource(build.num_examples, build.seed, bool(build.get("with_masks"))),
                            ClipSpec(build.num_frames, build.stride, build.size, build.size), data_dir,
                            depth_method="toy", examples_per_shard=build.examples_per_shard)
    num_shards = -(-build.num_examples // build.examples_per_shard)
    with tqdm(total=num_shards, desc="toy shards", unit="shard", disable=None) as bar:
      # build_shards logs one line per shard as it finishes.
      status = shards.build_shards(spec, build.num_workers, log=lambda line: (bar.write(line), bar.update())).exit_status
    if status != EXIT_OK:
      raise ConfigError(data_dir, f"building the toy shards exited {status}", "see the messages above")
  return data_dir, tokenizer_dir


def train_vae_stage(config: ml_collections.ConfigDict, model: VideoDiffusionModel, workdir: str) -> tuple[str, float]:
  """Trains the VAE first; returns (the directory `init_from` reads it from, the latents' scaling factor).

  The scaling factor makes the latents unit-variance (latent diffusion's scale_by_std): 1 / std of
  the posterior means of `vae_stage.scale_batches` batches, measured once and kept in a JSON file so
  a resumed run uses the same value. A stage that keeps the encoder frozen keeps the configured
  factor: its latents are the source VAE's, and so must be their scale.
  """
  directory = vae_stage.train_vae(config, model.vae, workdir)
  path = os.path.join(workdir, "vae_stage", "scaling_factor.json")
  patterns = config.vae_stage.get("trainable", ("vae/.*",))
  encoder_trains = any(re.fullmatch(p, "vae/encoder/conv_in/kernel") for p in patterns)
  if not encoder_trains:
    print(f"VAE stage done: encoder frozen, scaling factor {config.model.vae.scaling_factor:.4f} kept")
    return directory, float(config.model.vae.scaling_factor)
  if not os.path.exists(path):
    params = load_params(directory)
    loader_config = config.data.copy_and_resolve_references()
    loader_config.image_fraction = 0.0
    loader = Loader(loader_config)
    means = [model.encode_frames(params, next(loader)["frames"]) for _ in range(config.vae_stage.scale_batches)]
    loader.close()
    write_json(path, {"scaling_factor": float(1.0 / jnp.std(jnp.stack(means)))})
  with open(path) as f:
    scaling_factor = float(json.load(f)["scaling_factor"])
  print(f"VAE stage done: scaling factor {scaling_factor:.4f}")
  return directory, scaling_factor


def final_edit(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Scores the model just trained on the toy recolouring benchmark; returns its report.

  Edits `final_edit.num_clips` held-out benchmark scenes (`vidjax.eval.toy_edit`, seeds from
  1,000,000: never trained on) with the EMA params: each scene's depth and a caption with new
  colours, or for an image-content model (Gen-1) a picture of them (`toy_edit.reference_image`).
  Prints one row per scene and the summary (silhouette IoU, colour accuracy), writes the report to
  `<workdir>/toy_edit.json` and the first scene as `<workdir>/edit.mp4` (input | depth | edit).
  """
  model = build_model(config)
  edit, build = config.final_edit, config.data.build
  params = load_params(os.path.join(workdir, "checkpoints"), use_ema=True)
  cases = toy_edit.edit_cases(edit.num_clips, num_frames=build.num_frames, size=build.size, stride=build.stride)
  outputs = []

  def edit_case(case: toy_edit.EditCase) -> np.ndarray:
    if model.config.content == "image":  # Gen-1: the reference picture's CLIP embedding is the content
      content = {"image_embeds": generate.embed_images(model, params, [toy_edit.reference_image(case)])}
    else:
      content = {"tokens": tokenize([case.target_caption], config.data.tokenizer_dir, config.data.max_caption_tokens)}
    frames = generate.generate(model, params, case.source.disparity[None, ..., None], **content, seed=case.seed,
                               num_inference_steps=edit.num_inference_steps, guidance_scale=edit.guidance_scale,
                               temporal_guidance_scale=edit.temporal_guidance_scale)[0]
    outputs.append(frames)
    return frames

  print(f"toy recolouring benchmark, {edit.num_clips} held-out scenes (vidjax eval-toy-edit scores more):")
  print(f"{'seed':>8}  {'IoU':>5}  {'consist':>7}  {'secs':>6}  colours (wanted: got)")
  with tqdm(total=len(cases), desc="toy benchmark", unit="clip", disable=None) as bar:
    report = toy_edit.evaluate(edit_case, cases, on_row=lambda row: (bar.write(toy_edit.format_row(row)), bar.update()))
  print(toy_edit.summary(report))
  write_json(os.path.join(workdir, "toy_edit.json"), {"settings": edit.to_dict(), **report})
  first = cases[0]
  videos = [first.source.rgb, video_io.depth_to_rgb(first.source.disparity), outputs[0]]
  titles = ["input", "depth", f"edit: {first.target_caption}"]
  if model.config.content == "image":
    videos.insert(2, np.broadcast_to(toy_edit.reference_image(first), first.source.rgb.shape))
    titles[2:] = ["reference image", "edit like the reference"]
  grid = video_io.make_grid(videos, titles)
  out = os.path.join(workdir, "edit.mp4")
  video_io.write_video(out, grid, fps=8)
  print(f"edit of scene {first.seed}: {first.source.caption!r} -> {first.target_caption!r}, written to {out}")
  return report
