"""A stage that fits the UNet's image projection so a CLIP image embedding reads as a text model's context.

A Gen-1 model conditions on one CLIP image embedding, but the checkpoint it starts from (the toy
text checkpoint, SD for Gen-1) was trained to read a text encoder's hidden states, L tokens of them.
Re-making the cross-attention for the image embedding (`surgery.change_context_width`) throws that
reading away: one context token gives every position the same content, so the UNet cannot put a
colour on one object and not another. This stage instead fits the UNet's `encoder_hid_proj`
(`unet.ImageProjection`, diffusers' names: a linear map to K tokens, then LayerNorm; an MLP when
`model.unet.image_projection_mult` > 0), with
K = `model.unet.image_context_tokens` = `data.max_caption_tokens`, so that the projection of a frame's
CLIP image embedding regresses onto the source text encoder's `last_hidden_state` of that frame's
caption, (B, L, W): the UNet then reads the image through the cross-attention it already has.

Each step embeds one random frame of each clip with the frozen CLIP stage's vision tower
(`context_stage.clip_from`, default this workdir's `clip_stage/checkpoints`; the frame
`VideoDiffusionModel.embed_frames` embeds in the main stage, the raw `image_embeds` the UNet gets)
and encodes the caption with the frozen source text encoder (`context_stage.text_from`, a pretrained
directory with a 'text_encoder'). With probability `null_fraction` a pair is replaced by the null
pair: a zero embedding (the null image content the main stage's content dropout and CFG use) and the
empty prompt's hidden states (the null text content the source model was trained with), so
classifier-free guidance keeps its meaning. The loss is the MSE. The params land in
`<workdir>/context_stage/checkpoints` as {'unet': {'encoder_hid_proj'}}; the main stage reads them
through `init_from` after the source checkpoint (`surgery.load_weights` merges by path), and the
stage resumes like the CLIP stage (`pair_stage`). The held-out figure (`toy_context_eval`) is the MSE
on toy scenes outside the training seeds against the targets' variance (R^2).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vidjax import toyworld
from vidjax.conditioning.tokens import tokenize
from vidjax.convert import pretrained
from vidjax.errors import ConfigError, write_json
from vidjax.models.build import unet_config
from vidjax.models.clip import CLIPTextTransformer, preprocess_images, random_frame_pixels
from vidjax.models.unet import ImageProjection
from vidjax.train import pair_stage
from vidjax.train.checkpoint import load_params
from vidjax.train.clip_stage import RETRIEVAL_FIRST_SEED, Towers, trained_directory


def clip_directory(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The CLIP stage checkpoint whose vision tower the stage reads frozen."""
  return trained_directory(workdir, config.context_stage.clip_from, "context_stage.clip_from")


class ContextTraining:
  """The frozen encoders and the projection's loss, stateless over params."""

  def __init__(self, config: ml_collections.ConfigDict):
    stage = config.context_stage
    self.num_tokens = config.model.unet.image_context_tokens
    if self.num_tokens != config.data.max_caption_tokens:
      raise ConfigError("model.unet.image_context_tokens", f"{self.num_tokens}, but the source text model's "
                        f"context is data.max_caption_tokens = {config.data.max_caption_tokens} tokens",
                        "set image_context_tokens to data.max_caption_tokens")
    self.null_fraction = stage.null_fraction
    self.towers = Towers(config)
    (self.text_config, self.text_params), = pretrained.load_pretrained(stage.text_from, ("text_encoder",)).values()
    unet, embed_dim = unet_config(config), self.towers.image_config.projection_dim
    width = unet.cross_attention_dim
    if self.text_config.hidden_size != width:
      raise ConfigError("context_stage.text_from", f"its text encoder is {self.text_config.hidden_size} wide, the "
                        f"UNet's context (model.unet.cross_attention_dim) {width}",
                        "the projection's tokens stand in for the text's: pick a text model of the UNet's width")
    if embed_dim != unet.context_input_dim:
      raise ConfigError("model.unet.encoder_hid_dim", f"{unet.encoder_hid_dim}, but the CLIP "
                        f"image embedding is {embed_dim} wide", f"set model.unet.encoder_hid_dim = {embed_dim}")
    self.text = CLIPTextTransformer(self.text_config)
    self.projection = ImageProjection(self.num_tokens, unet.image_projection_mult, width)
    self.null_tokens = jnp.asarray(tokenize([""], config.data.tokenizer_dir, config.data.max_caption_tokens))

  def init(self, rng: jax.Array) -> dict[str, Any]:
    example = jnp.zeros((1, 1, self.towers.image_config.projection_dim))
    return {"unet": {"encoder_hid_proj": self.projection.init(rng, example)["params"]}}

  def constants(self, clip_params: Mapping[str, Any]) -> dict[str, Any]:
    """The frozen params the loss reads: the CLIP stage's vision tower and the source text encoder."""
    return {"image_encoder": clip_params["image_encoder"], "text_encoder": self.text_params}

  def project(self, params: Mapping[str, Any], image_embeds: jax.Array) -> jax.Array:
    """(B, D) image embeddings -> (B, K, D) context tokens, as the UNet makes them."""
    return self.projection.apply({"params": params["unet"]["encoder_hid_proj"]}, image_embeds[:, None])

  def targets(self, constants: Mapping[str, Any], tokens: jax.Array) -> jax.Array:
    """(B, L) token ids -> the source text encoder's (B, L, W) hidden states."""
    return self.text.apply({"params": constants["text_encoder"]}, tokens)["last_hidden_state"]

  def embed(self, constants: Mapping[str, Any], pixels: jax.Array) -> jax.Array:
    """(B, S, S, 3) CLIP pixels -> raw (B, D) image embeddings (not unit-norm: what the UNet gets)."""
    return self.towers.image.apply({"params": constants["image_encoder"]}, pixels)["image_embeds"]

  def loss(self, params, constants, image_embeds: jax.Array, tokens: jax.Array, rng: jax.Array):
    """MSE of the projected embeddings (B, D) on the hidden states of tokens (B, L), a `null_fraction` of
    the pairs replaced by the null pair; metrics add the fraction replaced."""
    null = jax.random.bernoulli(rng, self.null_fraction, image_embeds.shape[:1])
    image_embeds = jnp.where(null[:, None], 0.0, image_embeds)
    tokens = jnp.where(null[:, None], self.null_tokens, tokens)
    loss = jnp.mean((self.project(params, image_embeds) - self.targets(constants, tokens)) ** 2)
    return loss, {"loss": loss, "null_pairs": jnp.mean(null.astype(jnp.float32))}

  def batch_loss(self, params, constants, tokens, frames, rng):
    """The loss on a loader batch: tokens (B, L), frames (B, T, H, W, 3) in [-1, 1]."""
    frame_rng, null_rng = jax.random.split(rng)
    pixels = random_frame_pixels(frames, frame_rng, self.towers.image_config.image_size)
    return self.loss(params, constants, self.embed(constants, pixels), tokens, null_rng)


def train_context(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Fits the projection for config.context_stage.num_steps on config.data's clips; returns its checkpoint dir."""
  training = ContextTraining(config)
  return pair_stage.train_pairs(
      config, config.context_stage, os.path.join(workdir, "context_stage", "checkpoints"), init=training.init,
      loss=training.batch_loss, constants=training.constants(load_params(clip_directory(config, workdir))),
      seed=config.seed + 5, desc="Context stage")


def toy_context_eval(config: ml_collections.ConfigDict, directory: str, clip_dir: str, num_scenes: int) -> dict[str, Any]:
  """The projection's held-out figure over `num_scenes` toy scenes (seeds from RETRIEVAL_FIRST_SEED), each
  the CLIP image embedding of its middle frame and the source text encoder's hidden states of its
  caption: their MSE, the targets' variance about their mean over scenes, and r2 = 1 - mse / variance
  (0: no better than one mean context for every scene); and null_mse, the null pair's MSE."""
  training = ContextTraining(config)
  constants = training.constants(load_params(clip_dir))
  params = load_params(directory)
  build = config.data.build
  clips = [toyworld.render_clip(RETRIEVAL_FIRST_SEED + i, build.num_frames, build.size, build.size, build.stride)
           for i in range(num_scenes)]
  pixels = preprocess_images(np.stack([clip.rgb[len(clip.rgb) // 2] for clip in clips]),
                             training.towers.image_config.image_size)
  tokens = jnp.asarray(tokenize([clip.caption for clip in clips], config.data.tokenizer_dir,
                                config.data.max_caption_tokens))
  predict = jax.jit(lambda c, p, x: training.project(p, training.embed(c, x)))
  predicted = np.asarray(predict(constants, params, pixels))
  target = np.asarray(jax.jit(training.targets)(constants, tokens))
  mse = float(np.mean((predicted - target) ** 2))
  variance = float(np.mean((target - target.mean(axis=0)) ** 2))
  null = np.asarray(training.project(params, jnp.zeros((1, training.towers.image_config.projection_dim))))
  null_mse = float(np.mean((null - np.asarray(training.targets(constants, training.null_tokens))) ** 2))
  return {"num_scenes": num_scenes, "first_seed": RETRIEVAL_FIRST_SEED, "mse": mse, "variance": variance,
          "r2": 1.0 - mse / variance, "null_mse": null_mse}


def run_stage(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The stage and its held-out toy figure (printed, and in `<workdir>/context_stage/context_eval.json`;
  none when `context_stage.eval_scenes` is 0, as for data that is not the toy world's)."""
  directory = train_context(config, workdir)
  if not config.context_stage.eval_scenes:
    return directory
  report = toy_context_eval(config, directory, clip_directory(config, workdir), config.context_stage.eval_scenes)
  write_json(os.path.join(workdir, "context_stage", "context_eval.json"), report)
  print(f"Context stage done: over {report['num_scenes']} held-out toy scenes, the projected image embedding vs "
        f"the caption's text context: MSE {report['mse']:.4f} (variance {report['variance']:.4f}, R^2 "
        f"{report['r2']:.3f}); null pair MSE {report['null_mse']:.4f}")
  return directory
