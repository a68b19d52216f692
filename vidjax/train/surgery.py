"""Param surgery for staged training (Gen-1's four stages, Make-Your-Video's SD-2-depth start).

Each operation keeps the model's outputs where the paper needs them kept:
  merge_params          copy every param the source has (same path, same shape) into a fresh
                        target; the rest keep their init. Adding temporal layers to an image
                        checkpoint is this merge: temporal output projections start at zero, so
                        the video model equals the image model frame by frame.
  widen_input_channels  more UNet input channels (new structure channels) with zero weights:
                        outputs are unchanged until training moves them.
  change_context_width  a new content width (CLIP text -> image embeddings, Gen-1 stage 1):
                        cross-attention key/value projections are re-initialised for the new width.
Sources are read by `load_weights` (a pretrained directory, a training workdir or checkpoints).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping

import jax
import numpy as np

from vidjax import tree
from vidjax.convert import pretrained
from vidjax.errors import ConfigError
from vidjax.train.checkpoint import load_params


@dataclasses.dataclass
class MergeReport:
  copied: int
  kept_init: list[str]  # target paths the source lacks
  unused: list[str]  # source paths the target lacks

  def __str__(self) -> str:
    return f"copied {self.copied} tensors, {len(self.kept_init)} kept their init, {len(self.unused)} source tensors unused"


def load_weights(paths: str) -> dict[str, Any]:
  """{component: params} on the host from one or more comma-separated sources.

  Each source is a vidjax pretrained directory (`vidjax convert`), a training workdir, or a
  checkpoint directory (e.g. `<workdir>/vae_stage/checkpoints`). The sources merge by param path,
  a later source's tensor replacing an earlier one's at the same path: `run_a,run_b/vae_stage/checkpoints`
  takes run_a's UNet and text tower with run_b's VAE (all its tensors), and a source holding part of
  a component (the context stage's {'unet': {'encoder_hid_proj'}}) adds that part to the earlier
  source's component rather than replacing it.
  """
  weights = {}
  for path in (p.strip() for p in paths.split(",") if p.strip()):
    if os.path.exists(os.path.join(path, "config.json")):
      source = {name: p for name, (_, p) in pretrained.load_pretrained(path).items()}
    else:
      checkpoints = os.path.join(path, "checkpoints")
      source = load_params(checkpoints if os.path.isdir(checkpoints) else path)
    weights.update(tree.flatten(jax.device_get(source)))
  return tree.unflatten(weights)


def drop_excluded(params: Mapping[str, Any], exclude: tuple[str, ...]) -> dict[str, Any]:
  """`params` without the leaves whose '/'-joined path fully matches a regex of `exclude`."""
  return tree.unflatten({p: v for p, v in tree.flatten(params).items()
                         if not any(re.fullmatch(pattern, "/".join(p)) for pattern in exclude)})


def merge_params(target: Mapping[str, Any], source: Mapping[str, Any],
                 exclude: tuple[str, ...] = ()) -> tuple[dict[str, Any], MergeReport]:
  """Target's tree with every same-path source param copied in; a shape mismatch is an error.

  Copies take the target's dtype: a float16 export (`vidjax convert run --dtype float16`) loaded
  into a float32 model trains in float32, not in float16 (slow on CPU, and Adam's small updates
  round away). Source params whose '/'-joined path fully matches a regex of `exclude` are left
  out (the target keeps its init there, as where the source lacks them).
  """
  target_flat = tree.flatten(target)
  source_flat = tree.flatten(drop_excluded(source, exclude))
  mismatched = [f"{'/'.join(p)}: {np.shape(source_flat[p])} vs {np.shape(v)}" for p, v in target_flat.items()
                if p in source_flat and np.shape(source_flat[p]) != np.shape(v)]
  if mismatched:
    raise ConfigError("init_from params", "shapes differ from the model's: " + "; ".join(mismatched[:10]),
                      "use surgery (widen_input_channels, change_context_width) or a matching config")
  merged = {p: np.asarray(source_flat[p]).astype(np.asarray(v).dtype) if p in source_flat else v
            for p, v in target_flat.items()}
  report = MergeReport(copied=sum(p in source_flat for p in target_flat),
                       kept_init=["/".join(p) for p in target_flat if p not in source_flat],
                       unused=["/".join(p) for p in source_flat if p not in target_flat])
  return tree.unflatten(merged), report


def widen_input_channels(unet_params: Mapping[str, Any], in_channels: int) -> dict[str, Any]:
  """UNet params taking `in_channels` inputs; the added input channels get zero weights."""
  kernel = np.asarray(unet_params["conv_in"]["kernel"])  # (3, 3, in, out)
  extra = in_channels - kernel.shape[2]
  if extra < 0:
    raise ConfigError("in_channels", f"{in_channels} is fewer than the model's {kernel.shape[2]}",
                      "surgery only adds input channels")
  widened = np.concatenate([kernel, np.zeros(kernel.shape[:2] + (extra, kernel.shape[3]), kernel.dtype)], axis=2)
  return {**unet_params, "conv_in": {**unet_params["conv_in"], "kernel": widened}}


def replace_structure_channels(unet_params: Mapping[str, Any], in_channels: int,
                               latent_channels: int) -> dict[str, Any]:
  """UNet params for another structure kind: conv_in keeps its first `latent_channels` input channels
  (the noisy latent) and gets zero weights for the `in_channels - latent_channels` structure channels.

  For a pretrained model moved to a structure whose channels mean something else ('depth_pixels' ->
  Gen-1's 'depth_latent'): the old structure weights would read the new channels as the wrong thing,
  zeros start the model structure-blind, as `widen_input_channels` does for added channels.
  """
  kernel = np.asarray(unet_params["conv_in"]["kernel"])  # (3, 3, in, out)
  if not 0 < latent_channels <= min(in_channels, kernel.shape[2]):
    raise ConfigError("latent_channels", f"{latent_channels} is not within the model's {kernel.shape[2]} and the "
                      f"target's {in_channels} input channels", "pass the VAE's latent_channels")
  zeros = np.zeros(kernel.shape[:2] + (in_channels - latent_channels, kernel.shape[3]), kernel.dtype)
  replaced = np.concatenate([kernel[:, :, :latent_channels], zeros], axis=2)
  return {**unet_params, "conv_in": {**unet_params["conv_in"], "kernel": replaced}}


def change_context_width(unet_params: Mapping[str, Any], context_dim: int, rng: jax.Array,
                         scale: float = 0.02) -> dict[str, Any]:
  """Re-initialises every cross-attention (attn2) to_k / to_v kernel for `context_dim` inputs."""
  flat = tree.flatten(unet_params)
  keys = iter(jax.random.split(rng, len(flat)))
  out = {}
  for path, value in flat.items():
    if len(path) >= 3 and path[-3] == "attn2" and path[-2] in ("to_k", "to_v") and "temporal" not in "/".join(path):
      value = np.asarray(jax.random.normal(next(keys), (context_dim, np.shape(value)[1]))) * scale
    out[path] = value
  return tree.unflatten(out)
