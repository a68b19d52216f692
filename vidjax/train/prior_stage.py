"""A stage that trains Gen-1's text -> image-embedding prior (`vidjax.models.prior`) on frozen CLIP towers.

Gen-1 edits from text by sampling a CLIP image embedding from the caption's CLIP text encoding
with a prior, as DALL-E 2 does. The towers come frozen from a CLIP stage checkpoint
(`prior_stage.clip_from`; default the workdir's own `clip_stage/checkpoints`, with the towers'
configs `clip_stage.text_encoder` and `model.image_encoder` as that stage read them). Each step
embeds the batch's captions (last hidden states, text embedding) and one random frame of each clip
(`Towers.embed_random_frames`, the frame the CLIP stage and the main stage embed), drops the text
with probability `text_drop_prob` (classifier-free guidance) and regresses the prior onto the clean
image embedding, x0 MSE in `embedding_space` (unit embeddings times sqrt(D), DALL-E 2's normalised
CLIP space). Params and their EMA land in `<workdir>/prior_stage/checkpoints` ({'prior'}); the stage
resumes like the CLIP stage. The held-out figure (`toy_prior_eval`) compares, on toy scenes outside
the training seeds, the prior's samples and the text embeddings as stand-ins for the true image
embedding of each scene: their mean cosine with it.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vidjax import diffusion, toyworld
from vidjax.conditioning.tokens import tokenize
from vidjax.errors import ConfigError, write_json
from vidjax.eval.metrics import retrieval_top1
from vidjax.models.clip import preprocess_images
from vidjax.models.prior import DiffusionPrior, PriorConfig, embedding_space, example_inputs
from vidjax.sampling.prior import PriorSampler, PriorSamplingConfig, encode_prior_text
from vidjax.train import pair_stage
from vidjax.train.checkpoint import load_params
from vidjax.train.clip_stage import RETRIEVAL_FIRST_SEED, Towers, trained_directory


def prior_config(config: ml_collections.ConfigDict) -> PriorConfig:
  """The prior of `config.prior_stage.prior`, sized to the CLIP towers and the tokenizer's context."""
  towers = Towers(config)
  text_dim, image_dim = towers.text_config.projection_dim, towers.image_config.projection_dim
  if text_dim != image_dim:
    raise ConfigError("clip_stage.text_encoder.projection_dim", f"{text_dim} differs from the image tower's "
                      f"{image_dim}", "a CLIP's towers project to one embedding width")
  return PriorConfig(embed_dim=image_dim, text_width=towers.text_config.hidden_size,
                     max_text_tokens=config.data.max_caption_tokens, **config.prior_stage.prior.to_dict())


def clip_directory(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The CLIP stage checkpoint the prior reads its frozen towers from."""
  return trained_directory(workdir, config.prior_stage.clip_from, "prior_stage.clip_from")


class PriorTraining:
  """The frozen towers' encodings and the prior's loss, stateless over params."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.towers = Towers(config)
    self.prior = DiffusionPrior(prior_config(config))
    self.schedule = self.prior.config.schedule()

  def init(self, rng: jax.Array) -> dict[str, Any]:
    return {"prior": self.prior.init(rng, **example_inputs(self.prior.config))["params"]}

  def encode_text(self, clip_params: Mapping[str, Any], tokens: jax.Array) -> dict[str, jax.Array]:
    """(B, L) token ids -> the prior's text conditioning: hidden (B, L, W), embeds (B, D) in
    `embedding_space`, mask (B, L)."""
    return encode_prior_text(self.towers.text_config, clip_params["text_encoder"], tokens)

  def loss(self, params: Mapping[str, Any], text: Mapping[str, jax.Array], image_embeds: jax.Array, rng: jax.Array):
    """x0 MSE of the prior on clean image embeddings (B, D) in `embedding_space`, the text dropped at the
    configured rate; metrics add the fraction dropped."""
    drop_rng, diffusion_rng = jax.random.split(rng)
    drop = jax.random.bernoulli(drop_rng, self.prior.config.text_drop_prob, image_embeds.shape[:1])
    predict = lambda z, t: self.prior.apply({"params": params["prior"]}, z, t, text["hidden"], text["embeds"],
                                            text["mask"], drop)
    loss, metrics = diffusion.diffusion_loss(predict, image_embeds, diffusion_rng, self.schedule,
                                             prediction_type="sample")
    return loss, {**metrics, "text_dropped": jnp.mean(drop.astype(jnp.float32))}

  def batch_loss(self, params, clip_params, tokens, frames, rng):
    """The loss on a loader batch: tokens (B, L), frames (B, T, H, W, 3) in [-1, 1]."""
    frame_rng, loss_rng = jax.random.split(rng)
    image = embedding_space(self.towers.embed_random_frames(clip_params, frames, frame_rng))
    return self.loss(params, self.encode_text(clip_params, tokens), image, loss_rng)


def train_prior(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Trains the prior for config.prior_stage.num_steps on config.data's clips; returns its checkpoint dir."""
  stage = config.prior_stage
  training = PriorTraining(config)
  # DALL-E 2 samples its prior from an EMA of the weights (decay 0.9999 over 600K steps).
  return pair_stage.train_pairs(
      config, stage, os.path.join(workdir, "prior_stage", "checkpoints"), init=training.init,
      loss=training.batch_loss, constants=load_params(clip_directory(config, workdir)), seed=config.seed + 4,
      desc="Prior stage", ema_decay=stage.ema_decay)


def toy_prior_eval(config: ml_collections.ConfigDict, directory: str, clip_dir: str, num_scenes: int) -> dict[str, Any]:
  """The prior's held-out figure over `num_scenes` toy scenes (seeds from RETRIEVAL_FIRST_SEED), each its
  caption and the CLIP image embedding of its middle frame (the truth):

    prior_cosine: mean cosine(prior sample from the caption, truth), the EMA weights, one sample each;
    text_cosine: mean cosine(CLIP text embedding of the caption, truth), what the prior should beat;
  and caption -> frame top-1 with each as the query (chance about 1 / num_scenes), and the mean norm
  of the raw image embeddings (the scale the video model's content takes).
  """
  stage = config.prior_stage
  training = PriorTraining(config)
  clip_params = load_params(clip_dir)
  params = load_params(directory, use_ema=True)
  build = config.data.build
  clips = [toyworld.render_clip(RETRIEVAL_FIRST_SEED + i, build.num_frames, build.size, build.size, build.stride)
           for i in range(num_scenes)]
  captions = [clip.caption for clip in clips]
  pixels = preprocess_images(np.stack([clip.rgb[len(clip.rgb) // 2] for clip in clips]),
                             training.towers.image_config.image_size)
  tokens = jnp.asarray(tokenize(captions, config.data.tokenizer_dir, config.data.max_caption_tokens))
  raw_image = jax.jit(lambda p, x: training.towers.image.apply({"params": p["image_encoder"]}, x)["image_embeds"])(
      clip_params, pixels)
  image = _unit(raw_image)
  text = jax.jit(training.encode_text)(clip_params, tokens)
  sampler = PriorSampler(training.prior, PriorSamplingConfig(num_inference_steps=stage.num_inference_steps))
  sampled = _unit(sampler(params["prior"], text["hidden"], text["embeds"], text["mask"],
                           jax.random.key(stage.eval_seed), guidance_scale=stage.guidance_scale))
  text_unit = _unit(text["embeds"])
  return {"num_scenes": num_scenes, "first_seed": RETRIEVAL_FIRST_SEED, "guidance_scale": float(stage.guidance_scale),
          "num_inference_steps": int(stage.num_inference_steps),
          "prior_cosine": float(np.mean(np.sum(sampled * image, axis=-1))),
          "text_cosine": float(np.mean(np.sum(text_unit * image, axis=-1))),
          "prior_caption_to_frame_top1": retrieval_top1(sampled, image, captions),
          "text_caption_to_frame_top1": retrieval_top1(text_unit, image, captions),
          "chance": 1.0 / num_scenes, "image_embed_norm": float(np.mean(np.linalg.norm(raw_image, axis=-1)))}


def _unit(x: jax.Array) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def run_stage(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The stage and its held-out toy figure (printed, and in `<workdir>/prior_stage/prior_eval.json`; none
  when `prior_stage.eval_scenes` is 0, as for data that is not the toy world's)."""
  directory = train_prior(config, workdir)
  if not config.prior_stage.eval_scenes:
    return directory
  report = toy_prior_eval(config, directory, clip_directory(config, workdir), config.prior_stage.eval_scenes)
  write_json(os.path.join(workdir, "prior_stage", "prior_eval.json"), report)
  print(f"Prior stage done: over {report['num_scenes']} held-out toy scenes, mean cosine with the middle frame's "
        f"CLIP image embedding: prior sample {report['prior_cosine']:.4f}, text embedding {report['text_cosine']:.4f} "
        f"(caption -> frame top-1 {100 * report['prior_caption_to_frame_top1']:.1f} % vs "
        f"{100 * report['text_caption_to_frame_top1']:.1f} %, chance {100 * report['chance']:.1f} %)")
  return directory
