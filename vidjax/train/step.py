"""The pure training step: (state, batch) -> (state, metrics), jitted once per batch shape.

One step of the one diffusion loss on a batch from the loader:
  latents   cached latents, or the frozen VAE's posterior sample of the frames;
  structure the model's structure channels from the (t_s-blurred) depth, zeroed per sample with
            probability `structure_dropout`;
  content   caption tokens through the text encoder (or CLIP image embeddings), replaced per sample
            by the unconditional content with probability `content_dropout` (what CFG needs);
  image batches (T = 1, `image_mode`) skip the temporal layers: Gen-1's joint image-video training.
  weights   with `object_loss_weight` w > 0 (shards built with object masks, e.g. the toy world), each
            latent cell's squared error counts 1 + w * (the fraction of its pixels on an object), so
            small objects are not drowned by the background.
Randomness comes from fold_in(state.rng, step), so a resumed run draws the same numbers. A
non-finite loss or gradient either leaves the state unchanged (`nonfinite='skip'`) or is reported
in the metrics for the loop to stop on (`'stop'`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vidjax import diffusion
from vidjax.errors import ConfigError
from vidjax.models.video_model import VideoDiffusionModel
from vidjax.train import state as state_lib
from vidjax.train.state import TrainState

Batch = Mapping[str, jax.Array]


def conditioning(model: VideoDiffusionModel, config: ml_collections.ConfigDict, params: Mapping[str, Any],
                 batch: Batch, rng: jax.Array) -> tuple[jax.Array, jax.Array | None, dict[str, jax.Array]]:
  """The train step's inputs to the loss: latents, structure and (possibly dropped-out) content.

  No gradient flows into them. `config` is the train config (content_dropout, structure_dropout).
  Returns latents (B, T, h, w, C), structure (B, T, h, w, Cs) or None, and the content keyword of
  `model.encode_content`: {'tokens': (B, L)}, where a dropped sample holds the empty prompt's ids, or
  {'image_embeds': (B, D)}, where a dropped sample holds zeros (`model.null_content`'s embedding).
  Content and structure are dropped independently (their own keys).
  """
  latent_key, frame_key, drop_content_key, drop_structure_key = jax.random.split(rng, 4)
  frozen = jax.lax.stop_gradient(params)
  latents = batch["latents"] if "latents" in batch else model.encode_frames(frozen, batch["frames"], latent_key)
  b = latents.shape[0]
  structure = model.encode_structure(frozen, batch["depth"], batch["structure_fidelity"], latents.shape[2:4])
  if structure is not None:
    keep = jax.random.uniform(drop_structure_key, (b,)) >= config.structure_dropout
    structure = structure * keep[:, None, None, None, None].astype(structure.dtype)
  drop = jax.random.uniform(drop_content_key, (b,)) < config.content_dropout
  if model.config.content == "text":
    content = {"tokens": jnp.where(drop[:, None], model.null_tokens(b), batch["tokens"])}
  else:  # Gen-1: the CLIP embedding of a random frame (cached embeddings when the batch has them)
    if "image_embeds" not in batch and "frames" not in batch:
      raise ConfigError("data.use_latents", "is set for a CLIP-image-content model, but the batches hold neither "
                        "frames for the CLIP tower nor cached 'image_embeds'",
                        "feed batches with precomputed CLIP image embeddings 'image_embeds' (B, D) beside the "
                        "latents, or set data.use_latents=False so the frozen CLIP tower embeds a frame of each clip")
    embeds = batch["image_embeds"] if "image_embeds" in batch else model.embed_frames(frozen, batch["frames"], frame_key)
    content = {"image_embeds": jnp.where(drop[:, None], 0.0, embeds)}
  return latents, structure, content


def make_train_step(model: VideoDiffusionModel, tx: optax.GradientTransformation, labels: Any,
                    config: ml_collections.ConfigDict) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
  """Returns train_step(state, batch, image_mode: bool) -> (state, metrics); see the module docstring."""
  train_mask = jax.tree_util.tree_map(lambda label: label == "train", labels)

  def train_step(state: TrainState, batch: Batch, image_mode: bool = False):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    cond_key, loss_key = jax.random.split(rng)
    latents, structure, content = conditioning(model, config, state.params, batch, cond_key)
    element_weights = object_weights(batch, latents.shape[2:4], config.get("object_loss_weight", 0.0))

    def loss_fn(params):
      context = model.encode_content(params, **content)
      predict = lambda z_t, t: model.unet.apply({"params": params["unet"]}, z_t, t, context, structure,
                                                image_mode=image_mode)
      return diffusion.diffusion_loss(predict, latents, loss_key, model.schedule,
                                      prediction_type=model.config.prediction_type,
                                      min_snr_gamma=config.min_snr_gamma or None,
                                      element_weights=element_weights)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.global_norm(jax.tree_util.tree_map(lambda g, m: g if m else jnp.zeros_like(g), grads, train_mask))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state_lib.update_ema(state.ema_params, params, config.ema_decay)
    if isinstance(tx, optax.MultiSteps):  # accumulating: the EMA steps with the params, once per update
      updated = tx.has_updated(opt_state)
      ema = jax.tree_util.tree_map(lambda new, old: jnp.where(updated, new, old), ema, state.ema_params)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if config.nonfinite == "skip":  # keep the old state, but count the step so the data moves on
      new_state = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old), new_state,
                                         state.replace(step=state.step + 1))
    return new_state, dict(metrics, grad_norm=grad_norm, finite=finite)

  return train_step


def object_weights(batch: Batch, latent_hw: tuple[int, int], weight: float,
                   setting: str = "train.object_loss_weight", margin: int = 0) -> jax.Array | None:
  """(N, T, h, w, 1) loss weights 1 + weight * object coverage per cell, or None when weight is 0.

  batch["object_mask"] is (N, T, H, W, 1) in {0, 1}; H and W are multiples of h and w (the VAE
  factor for latents; h, w = H, W weighs pixels). `setting` names the config field in errors.
  margin > 0 first dilates the mask by that many pixels (a (2 margin + 1)^2 square): with weights
  on the object alone, a pixel on its edge costs 1 + w if painted floor but 1 if painted object, so
  a decoder learns to paint every uncertain edge pixel object-coloured and objects come out
  dilated (toy VAE round trip: 22 % too large, 34x more false than missed object pixels). A
  margin wider than the blur weighs both sides of an edge alike.
  """
  if not weight:
    return None
  if "object_mask" not in batch:
    raise ConfigError(setting, f"is {weight}, but the batches hold no object masks",
                      "build the shards with --with_masks (toy: data.build.with_masks=True), or set it to 0")
  mask = batch["object_mask"]
  if margin:
    window = (1, 1, 2 * margin + 1, 2 * margin + 1, 1)
    mask = jax.lax.reduce_window(mask, jnp.array(0, mask.dtype), jax.lax.max, window, (1,) * 5, "SAME")
  n, t, height, width, _ = mask.shape
  h, w = latent_hw
  coverage = mask.reshape(n, t, h, height // h, w, width // w, 1).mean(axis=(3, 5))
  return 1.0 + weight * coverage
