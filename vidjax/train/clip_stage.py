"""A first stage that trains CLIP's text and vision towers contrastively on the training clips.

The toy world has no pretrained CLIP, as it has no pretrained VAE (`vae_stage`): Gen-1's content
is a frozen CLIP image embedding, so a toy Gen-1 model needs a toy CLIP first. The objective is
CLIP's (Radford et al. 2021): for a batch of N (caption, frame) pairs, the symmetric cross-entropy
of the N x N cosine similarities scaled by a learned temperature exp(logit_scale) (initialised at
1 / 0.07, clipped at 100, as CLIP). The frame is one random frame of each clip, through the one CLIP
preprocessing (`clip.random_frame_pixels`), as `VideoDiffusionModel.embed_frames` picks it in the
main stage, so the vision tower is trained on exactly what it will embed.

With `clip_stage.colour_negatives`, each caption also brings two hard negatives for the image ->
caption direction, as NegCLIP (Yuksekgonul et al. 2023, "When and why vision-language models behave
like bags-of-words") adds word-order negatives: the caption with one object's colour word replaced
by another colour, and with its colour words rotated among its objects (a negative only where that
changes it); `clip_stage.shape_negatives` adds the same two for the shape words. Plain contrastive
captions are told apart by the set of colours a frame holds, not by which object holds which: on 329
held-out toy scenes with two differently coloured objects, a toy
CLIP trained on 2048 scenes scores the true caption above its colour-swapped twin for 60.5 % (chance
50 %), with the negatives 72.9 % (`benchmarks/toy_clip_probe.py`); with the negatives on 16384
scenes (configs/toy_gen1.py; on 2048 it overfits) 97.6 %. Colour negatives alone leave shapes out: that
CLIP's embedding names a lone object's shape 30.4 % of the time (chance 25 %), its colour 98.8 %; with
shape negatives too, shape 47.4 % but the swap test falls to 79.6 %; a wider CLIP with both, 67.8 %
and 86.0 %, and either fits the text context worse (configs/toy_gen1.py).

The towers' configs are `clip_stage.text_encoder` (with a `projection_dim`) and `model.image_encoder`
(the main stage's frozen content encoder); params land in `<workdir>/clip_stage/checkpoints`
({'text_encoder', 'image_encoder', 'logit_scale'}), which the main stage reads through `init_from`
(a component the model lacks is ignored). The stage resumes like the main stage (`pair_stage`).
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vidjax import toyworld
from vidjax.conditioning.tokens import tokenize
from vidjax.errors import ConfigError, write_json
from vidjax.eval.metrics import retrieval_top1
from vidjax.models.build import clip_configs
from vidjax.models.clip import CLIPTextTransformer, CLIPVisionTransformer, preprocess_images, random_frame_pixels
from vidjax.train import pair_stage
from vidjax.train.checkpoint import load_params

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clips the temperature at 100
# Held-out scenes for the retrieval figure: outside the training seeds (0..16383 in configs/toy_gen1.py)
# and the recolouring benchmark's (1,000,000 on).
RETRIEVAL_FIRST_SEED = 500_000


class Towers:
  """The two towers of one CLIP: embeddings and the contrastive loss, stateless over params."""

  def __init__(self, config: ml_collections.ConfigDict, negative_words: tuple[tuple[int, ...], ...] = ()):
    """negative_words: one tuple of token ids per word class (colours, shapes) whose words the hard
    negatives swap (`swap_negatives`); empty: plain CLIP."""
    self.negative_words = tuple(ids for ids in negative_words if ids)
    self.text_config, self.image_config = clip_configs(config)
    self.text = CLIPTextTransformer(self.text_config)
    self.image = CLIPVisionTransformer(self.image_config)

  def init(self, rng: jax.Array) -> dict[str, Any]:
    text_key, image_key = jax.random.split(rng)
    size = self.image_config.image_size
    tokens = jnp.zeros((1, self.text_config.max_position_embeddings), jnp.int32)
    return {"text_encoder": self.text.init(text_key, tokens)["params"],
            "image_encoder": self.image.init(image_key, jnp.zeros((1, size, size, 3)))["params"],
            "logit_scale": jnp.asarray(math.log(1 / 0.07), jnp.float32)}

  def embed_text(self, params: Mapping[str, Any], tokens: jax.Array) -> jax.Array:
    """(N, L) token ids -> unit-norm (N, D) text embeddings."""
    return _unit(self.text.apply({"params": params["text_encoder"]}, tokens)["text_embeds"])

  def embed_pixels(self, params: Mapping[str, Any], pixels: jax.Array) -> jax.Array:
    """(N, S, S, 3) CLIP pixels -> unit-norm (N, D) image embeddings."""
    return _unit(self.image.apply({"params": params["image_encoder"]}, pixels)["image_embeds"])

  def embed_random_frames(self, params: Mapping[str, Any], frames: jax.Array, rng: jax.Array) -> jax.Array:
    """(N, T, H, W, 3) clips in [-1, 1] -> unit-norm (N, D) embeddings of one random frame of each."""
    return self.embed_pixels(params, random_frame_pixels(frames, rng, self.image_config.image_size))

  def loss(self, params: Mapping[str, Any], tokens: jax.Array, frames: jax.Array, rng: jax.Array):
    """tokens (N, L), frames (N, T, H, W, 3) in [-1, 1] (one random frame each is embedded) -> (loss, metrics)."""
    n = frames.shape[0]
    frame_rng, negative_rng = jax.random.split(rng)
    image = self.embed_random_frames(params, frames, frame_rng)
    text = self.embed_text(params, tokens)
    scale = jnp.exp(jnp.minimum(params["logit_scale"], MAX_LOGIT_SCALE))
    logits = scale * image @ text.T  # (N images, N captions)
    labels = jnp.arange(n)
    cross_entropy = lambda x: -jnp.mean(jax.nn.log_softmax(x, axis=-1)[labels, labels])
    image_to_text = logits
    if self.negative_words:
      # The first class keeps the stage's key as it was before shapes existed, so colour-only runs repeat.
      keys = [negative_rng] + [jax.random.fold_in(negative_rng, i) for i in range(1, len(self.negative_words))]
      pairs = [swap_negatives(tokens, jnp.asarray(ids, tokens.dtype), key) for ids, key in zip(self.negative_words, keys)]
      negatives, valid = (jnp.concatenate(parts, axis=1) for parts in zip(*pairs))
      negative_text = self.embed_text(params, negatives.reshape(-1, tokens.shape[1])).reshape(n, -1, text.shape[1])
      negative_logits = scale * jnp.einsum("nd,nkd->nk", image, negative_text)
      image_to_text = jnp.concatenate([logits, jnp.where(valid, negative_logits, -jnp.inf)], axis=1)
    loss = 0.5 * (cross_entropy(image_to_text) + cross_entropy(logits.T))
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
    return loss, {"loss": loss, "batch_top1": accuracy, "temperature": scale}


def swap_negatives(tokens: jax.Array, word_ids: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Hard negative captions: (N, L) ids -> ((N, 2, L) ids, (N, 2) bool: the negative differs from its caption).

  `word_ids` are one word class's ids (the colours, or the shapes). Negative 0 replaces one random word
  of the class with another; negative 1 rotates the class's words (the k-th takes the (k+1)-th's), so the
  same colours (shapes) sit on other objects.
  """
  n, length = tokens.shape
  is_word = jnp.any(tokens[..., None] == word_ids, axis=-1)  # (N, L)
  count = is_word.sum(axis=1)
  pick_rng, word_rng = jax.random.split(rng)
  position = jnp.argmax(jnp.where(is_word, jax.random.uniform(pick_rng, (n, length)), -1.0), axis=1)
  current = jnp.argmax(tokens[jnp.arange(n), position][:, None] == word_ids, axis=1)
  other = (current + jax.random.randint(word_rng, (n,), 1, len(word_ids))) % len(word_ids)
  replaced = jnp.where((count > 0)[:, None], tokens.at[jnp.arange(n), position].set(word_ids[other]), tokens)
  order = jnp.argsort(~is_word, axis=1, stable=True)  # the class's positions first, in caption order
  k = jnp.arange(length)
  source = jnp.take_along_axis(order, jnp.where(k < count[:, None], (k + 1) % jnp.maximum(count, 1)[:, None], k), 1)
  rotated = tokens.at[jnp.arange(n)[:, None], order].set(jnp.take_along_axis(tokens, source, axis=1))
  negatives = jnp.stack([replaced, rotated], axis=1)
  return negatives, jnp.any(negatives != tokens[:, None], axis=-1) & (count > 0)[:, None]


def _unit(x: jax.Array) -> jax.Array:
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def trained_directory(workdir: str, clip_from: str, setting: str) -> str:
  """The CLIP stage checkpoint a later stage reads its frozen towers from: `clip_from` (the later
  stage's `setting`), or else this workdir's own `clip_stage/checkpoints`."""
  directory = clip_from or os.path.join(workdir, "clip_stage", "checkpoints")
  if not os.path.isdir(directory):
    raise ConfigError(setting, f"no CLIP stage checkpoint at {directory}",
                      f"train the CLIP stage first (clip_stage.num_steps > 0) or point {setting} at its checkpoints")
  return directory


def train_clip(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Trains both towers for config.clip_stage.num_steps on config.data's clips; returns its checkpoint dir."""
  stage = config.clip_stage
  towers = Towers(config, (
      word_token_ids(config, toyworld.COLOURS, "clip_stage.colour_negatives") if stage.get("colour_negatives") else (),
      word_token_ids(config, toyworld.SHAPES, "clip_stage.shape_negatives") if stage.get("shape_negatives") else ()))
  return pair_stage.train_pairs(
      config, config.clip_stage, os.path.join(workdir, "clip_stage", "checkpoints"), init=towers.init,
      loss=lambda params, _, tokens, frames, rng: towers.loss(params, tokens, frames, rng), seed=config.seed + 3,
      desc="CLIP stage")


def word_token_ids(config: ml_collections.ConfigDict, words, setting: str) -> tuple[int, ...]:
  """The token ids of `words` (the toy colours or shapes), each one token of the toy tokenizer."""
  ids = tokenize(list(words), config.data.tokenizer_dir, config.data.max_caption_tokens)
  if np.any(ids[:, 3:] != ids[0, -1]):  # [bos, word, eos, pad...]: a word that splits has no pad at 3
    raise ConfigError(setting, f"a word of {list(words)} is not one token of the tokenizer",
                      f"use the toy tokenizer, or turn {setting.split('.')[-1]} off")
  return tuple(int(i) for i in ids[:, 1])


def toy_retrieval(config: ml_collections.ConfigDict, directory: str, num_scenes: int) -> dict[str, Any]:
  """Caption -> frame and frame -> caption top-1 over `num_scenes` held-out toy scenes (seeds from
  RETRIEVAL_FIRST_SEED), each its middle frame and its caption; chance is about 1 / num_scenes.

  A retrieved item counts as right when its caption is the query's (two scenes can share a caption).
  """
  towers = Towers(config)
  params = load_params(directory)
  build = config.data.build
  clips = [toyworld.render_clip(RETRIEVAL_FIRST_SEED + i, build.num_frames, build.size, build.size, build.stride)
           for i in range(num_scenes)]
  captions = [clip.caption for clip in clips]
  frames = np.stack([clip.rgb[len(clip.rgb) // 2] for clip in clips])
  tokens = tokenize(captions, config.data.tokenizer_dir, config.data.max_caption_tokens)
  image = np.asarray(jax.jit(towers.embed_pixels)(params, preprocess_images(frames, towers.image_config.image_size)))
  text = np.asarray(jax.jit(towers.embed_text)(params, jnp.asarray(tokens)))
  return {"num_scenes": num_scenes, "first_seed": RETRIEVAL_FIRST_SEED, "chance": 1.0 / num_scenes,
          "caption_to_frame_top1": retrieval_top1(text, image, captions),
          "frame_to_caption_top1": retrieval_top1(image, text, captions)}


def run_stage(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The stage and its held-out retrieval figure (printed, and in `<workdir>/clip_stage/retrieval.json`)."""
  directory = train_clip(config, workdir)
  report = toy_retrieval(config, directory, config.clip_stage.retrieval_scenes)
  write_json(os.path.join(workdir, "clip_stage", "retrieval.json"), report)
  print(f"CLIP stage done: held-out retrieval over {report['num_scenes']} toy scenes, caption -> frame top-1 "
        f"{100 * report['caption_to_frame_top1']:.1f} %, frame -> caption {100 * report['frame_to_caption_top1']:.1f} % "
        f"(chance {100 * report['chance']:.1f} %)")
  return directory
