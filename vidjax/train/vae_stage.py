"""A first stage that trains the VAE on the training frames (the toy world has no pretrained VAE).

Loss: L1 reconstruction + `kl_weight` * KL(q(z|x) || N(0, I)), the autoencoder objective of latent
diffusion without its perceptual and adversarial terms (enough for the toy world's flat shading).
With `object_loss_weight` w > 0 and shards holding object masks, object pixels count 1 + w in the
L1 mean: the toy world's objects cover ~6% of a frame, and an unweighted VAE blurs their colours.
`object_loss_margin` m extends that weight to m pixels around each object, so both sides of an edge
weigh the same and the decoder has no reason to paint edge pixels object-coloured (`object_weights`).
It uses the trainer's state, optimizer and checkpoints, so it resumes like the main stage; its
params land in `<workdir>/vae_stage/checkpoints`, which the main stage loads through `init_from`.

`init_from` (any `surgery.load_weights` source holding a VAE) starts from a trained VAE, and
`trainable` (regexes over 'vae/...' paths) picks what trains: with ('vae/decoder/.*',
'vae/post_quant_conv/.*') only the decoder learns, so the latents, and a diffusion model trained on
them, stay valid (Stable Diffusion's ft-MSE VAE was made this way). A trainable part whose shape
differs from the source's (a wider `decoder_block_out_channels`) starts from its init.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vidjax import tree
from vidjax.data.loader import Loader
from vidjax.errors import ConfigError
from vidjax.models.vae import AutoencoderKL
from vidjax.parallel.sharding import unbox
from vidjax.train import state as state_lib
from vidjax.train import surgery
from vidjax.train.checkpoint import Checkpointer
from vidjax.train.logging import ProgressLine
from vidjax.train.step import object_weights


def vae_loss(vae: AutoencoderKL, params, frames: jax.Array, rng: jax.Array, kl_weight: float,
             pixel_weights: jax.Array | None = None):
  """frames (N, H, W, 3) in [-1, 1], pixel_weights (N, H, W, 1) or None -> (loss, metrics)."""
  mean, logvar = vae.apply({"params": params}, frames, method=AutoencoderKL.encode)
  z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape)
  recon = vae.apply({"params": params}, z, method=AutoencoderKL.decode)
  error = jnp.abs(recon - frames)
  if pixel_weights is None:
    l1 = jnp.mean(error)
  else:
    l1 = jnp.sum(pixel_weights * error) / (jnp.sum(pixel_weights) * frames.shape[-1])
  kl = 0.5 * jnp.mean(jnp.sum(mean**2 + jnp.exp(logvar) - 1.0 - logvar, axis=-1))
  return l1 + kl_weight * kl, {"loss": l1 + kl_weight * kl, "l1": l1, "kl": kl}


def start_from(params: dict[str, Any], labels: dict[str, Any], path: str) -> dict[str, Any]:
  """{'vae': fresh params} with the VAE of `path` copied in; trainable tensors of another shape keep their init.

  A frozen tensor the source lacks, or has in another shape, is an error: it would never train.
  """
  source = surgery.load_weights(path)
  if "vae" not in source:
    raise ConfigError("vae_stage.init_from", f"{path} holds no VAE (components: {sorted(source)})",
                      "point at a training workdir, its vae_stage/checkpoints, or a pretrained directory")
  target = tree.flatten(jax.device_get(params["vae"]))
  trains = {p: l == "train" for p, l in tree.flatten(labels["vae"]).items()}
  copied = {p: v for p, v in tree.flatten(source["vae"]).items()
            if p in target and np.shape(v) == np.shape(target[p])}
  lost = ["/".join(p) for p in target if p not in copied and not trains[p]]
  if lost:
    raise ConfigError("vae_stage.init_from", f"frozen VAE params missing from {path} or reshaped: {lost[:5]}",
                      "train them (vae_stage.trainable) or use a VAE source of the same architecture")
  merged, report = surgery.merge_params(params["vae"], tree.unflatten(copied))
  print(f"VAE stage init_from {path}: {report}")
  return {"vae": jax.device_put(merged)}


def train_vae(config: ml_collections.ConfigDict, vae: AutoencoderKL, workdir: str) -> str:
  """Trains `vae` for config.vae_stage.num_steps on frames from config.data; returns its checkpoint dir."""
  stage = config.vae_stage
  directory = os.path.join(workdir, "vae_stage", "checkpoints")
  data = config.data.copy_and_resolve_references()
  data.image_fraction, data.use_latents, data.batch_size = 0.0, False, stage.batch_size
  train = ml_collections.ConfigDict(dict(config.train.to_dict(), lr=stage.lr, warmup_steps=stage.warmup_steps,
                                         num_steps=stage.num_steps, lr_schedule="constant", grad_accum_steps=1))
  init = lambda key: {"vae": vae.init(key, jnp.zeros((1, 16, 16, 3)))["params"]}
  patterns = tuple(stage.get("trainable", ("vae/.*",)))
  labels = state_lib.trainable_labels(jax.eval_shape(init, jax.random.key(0)), patterns)
  tx = state_lib.make_optimizer(train, labels)

  object_weight = stage.get("object_loss_weight", 0.0)

  @jax.jit
  def step_fn(state, frames, pixel_weights):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    grad_fn = jax.value_and_grad(lambda p: vae_loss(vae, p["vae"], frames, rng, stage.kl_weight, pixel_weights),
                                 has_aux=True)
    (_, metrics), grads = grad_fn(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = jax.tree_util.tree_map(lambda p, u: p + u, state.params, updates)
    # No averaging in this stage: its "EMA" is the params themselves (what init_from and export read).
    ema = state_lib.trainable_subtree(params, labels)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema), metrics

  checkpointer = Checkpointer(directory, keep=1, async_save=False)
  loader = Loader(data)
  create = lambda key: state_lib.create_state(init, tx, labels, key)
  if checkpointer.latest_step() is not None:
    abstract = jax.eval_shape(lambda key: unbox(create(key)), jax.random.key(0))
    state, data_state, _ = checkpointer.restore(abstract)
    loader.set_state(data_state)
  else:
    state = jax.jit(lambda key: unbox(create(key)))(jax.random.key(config.seed + 1))
    if stage.get("init_from"):
      params = start_from(state.params, labels, stage.init_from)
      state = state.replace(params=params, ema_params=state_lib.ema_like(params, state.ema_params))
  print(f"VAE stage: {stage.num_steps} steps on single frames")
  progress = ProgressLine(stage.num_steps, clips_per_step=data.batch_size * config.data.build.num_frames,
                          frames_per_clip=1, every=config.log.every_steps, start_step=int(state.step),
                          desc="VAE stage")
  while int(state.step) < stage.num_steps:
    batch = next(loader)
    frames = batch["frames"].reshape((-1,) + batch["frames"].shape[2:])
    weights = object_weights(batch, frames.shape[1:3], object_weight, "vae_stage.object_loss_weight",
                             stage.get("object_loss_margin", 0))
    weights = None if weights is None else weights.reshape(frames.shape[:3] + (1,))
    state, metrics = step_fn(state, frames, weights)
    progress.update(int(state.step), {k: float(v) for k, v in metrics.items()})
    if int(state.step) % config.checkpoint.every_steps == 0 or int(state.step) == stage.num_steps:
      checkpointer.save(int(state.step), state, data_state=loader.get_state(), config=config.to_dict())
  checkpointer.wait_until_finished()
  checkpointer.close()
  loader.close()
  return directory
