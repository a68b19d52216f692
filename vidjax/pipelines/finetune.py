"""Customization (Gen-1 Sec. 4.4): fine-tune a checkpoint on 15-30 images of a subject named by a new token.

  vidjax finetune --checkpoint DIR --images FOLDER --token sks --out OUT [--mode lora|full] [--steps N]
  finetune(FinetuneSettings(token="sks"), checkpoint, images, out)   # the same from Python

then `vidjax edit --checkpoint OUT --prompt "a sks cube on a plain floor at night" ...`.

The recipe is the model's own joint image-video training (`vidjax.train.step.conditioning` and the one
diffusion loss): subject images are single frames in image mode (temporal layers skipped); Gen-1 fills
"half of the batch elements" with the original training data (prior preservation), here
`prior_fraction` of every image batch, plus `video_fraction` of the steps as video batches of it, so
the shared spatial weights keep serving the vocabulary and the temporal layers keep seeing what they
were trained with. Prior data: 'toy' renders the toy world's training scenes (seeds 0..2047, the
embedded checkpoint's data) with their captions; 'auto' uses it for toy checkpoints and none otherwise.

The token: added to the checkpoint's tokenizer (`transformers` `add_tokens` as one single-word token,
so the toy word-level vocabulary and CLIP BPE folders take the same path; a token already in the
vocabulary is an error), with a new row of the text encoder's token-embedding table, initialised to
`init_word`'s row (default: the mean of the vocabulary's rows) and trained at `token_lr` (textual
inversion's part). The rest of the text encoder stays frozen.

Captions: `<image stem>.txt` beside an image if present (it must contain the token), else
`caption_template` with `{token}` filled in (default "a {token}"). Depth: `<stem>.depth.npy` beside
each image (float (H, W), large = near), else the checkpoint's bundled depth estimator, else brightness
as depth (as `vidjax edit` falls back; printed).

Images: PNG, JPEG, WebP or BMP (any mode, read as RGB); each is scaled to cover the model's trained size
(manifest video.size) and centre-cropped. The short side must be at least half the target's: a smaller
image (a 1-pixel one) would be upscaled past recognition. At least `min_images` (15, Gen-1's lower end)
images; any other file in the folder (besides .txt / .depth.npy sidecars and hidden files) is an error.

Modes and outputs (`--out`, written atomically: a failed run leaves nothing there):
  lora  LoRA (rank `lora_rank`) on the UNet's spatial attention projections; OUT holds
        lora.safetensors (the adapters), token_embedding.safetensors (the grown token table),
        tokenizer/ and finetune.json naming the base checkpoint (its path and unet sha256).
        `load_model_dir(OUT)` / `VideoEditPipeline.from_pretrained(OUT)` load base + LoRA; `load_lora`
        applies it to base params in Python.
  full  the whole UNet trains; OUT is a whole model directory (unet float32, the base's vae, the grown
        text encoder and tokenizer) with a 'finetune' manifest entry.

Guidance: OUT recommends `guidance_scale` for its edits (its sampling_defaults, as `vidjax convert run`
writes them; `vidjax edit --guidance_scale` still overrides it): on the toy world a learnt concept
edits best at twice the base's guidance, and worse again at more (README "Customization").

Resuming: Orbax checkpoints every `checkpoint_every` steps in --workdir (default OUT + '.finetune-work');
a killed run relaunched with the same arguments continues and ends bit-equal to a straight run (batches
are a function of (seed, step)). The work folder is removed once OUT is written.

Measured (`python benchmarks/finetune_toy.py`): see README "Customization".
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from PIL import Image, UnidentifiedImageError
from safetensors.numpy import save_file

from vidjax import diffusion, interpolate, toyworld, tree
from vidjax.conditioning.tokens import Tokenizer
from vidjax.convert import pretrained
from vidjax.errors import ConfigError, InputError, atomic_path, check_number, usual_mode
from vidjax.models.video_model import ModelConfig, VideoDiffusionModel
from vidjax.pipelines.model_dir import LORA_MANIFEST as MANIFEST
from vidjax.pipelines.model_dir import ModelDir, load_lora, load_model_dir  # noqa: F401 (load_lora: this API)
from vidjax.train import lora
from vidjax.train.checkpoint import Checkpointer
from vidjax.train.logging import ProgressLine
from vidjax.train.state import TrainState
from vidjax.train.step import conditioning

FORMAT = "vidjax-finetune"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
TOKEN_TABLE = ("text_encoder", "embeddings", "token_embedding", "embedding")
_TOKEN = re.compile(r"^[a-z][a-z0-9]*$")
_TOY_TRAINING_SEEDS = 2048  # the embedded toy checkpoint's scenes (toy_edit.TRAINING_SEEDS)


@dataclasses.dataclass(frozen=True)
class FinetuneSettings:
  """Every knob of `finetune` (the CLI's flags have the same names)."""

  token: str
  mode: str = "lora"  # 'lora' | 'full'
  num_steps: int = 400
  batch_size: int = 4
  lr: float | None = None  # None: 1e-3 for LoRA, 1e-4 for full fine-tuning (`learning_rate`)
  # token_lr and lora_rank / lora_alpha: chosen on validation scenes (benchmarks/finetune_toy.py
  # --first_seed 500000; README "Customization").
  token_lr: float = 1e-2
  warmup_steps: int = 20
  lora_rank: int = 32
  lora_alpha: float = 32.0  # the adapters' scale is alpha / rank
  lora_pattern: str = lora.SPATIAL_ATTENTION
  caption_template: str = "a {token}"
  init_word: str = ""  # the new row starts as this word's row; '' = the mean of the vocabulary
  prior_data: str = "auto"  # 'auto' | 'toy' | 'none'
  prior_fraction: float = 0.5  # of each image batch (Gen-1: half)
  video_fraction: float = 0.25  # of the steps: video batches of the prior data
  content_dropout: float = 0.1  # as in training, so classifier-free guidance keeps working
  min_snr_gamma: float = 5.0
  min_images: int = 15
  checkpoint_every: int = 50
  seed: int = 0
  # Written into OUT as its recommended guidance (module docstring). On 60 validation scenes (LoRA,
  # the defaults above; README "Customization") 3 gave 68.2 % of objects the concept, the toy
  # checkpoint's own 1.5 gave 61.7 % and 5 gave 57.9 %.
  guidance_scale: float = 3.0

  @property
  def learning_rate(self) -> float:
    return self.lr if self.lr is not None else (1e-3 if self.mode == "lora" else 1e-4)

  def validate(self) -> FinetuneSettings:
    """Raises ConfigError naming the first bad knob; returns self."""
    if not _TOKEN.match(self.token or ""):
      raise ConfigError("token", f"{self.token!r} is not one lowercase word", "pass a rare word such as 'sks'")
    if self.mode not in ("lora", "full"):
      raise ConfigError("mode", f"unknown {self.mode!r}", "use 'lora' or 'full'")
    if self.prior_data not in ("auto", "toy", "none"):
      raise ConfigError("prior_data", f"unknown {self.prior_data!r}", "use 'auto', 'toy' or 'none'")
    if "{token}" not in self.caption_template:
      raise ConfigError("caption_template", f"{self.caption_template!r} lacks '{{token}}'",
                        "write the token's place as {token}, e.g. 'a {token}'")
    for name, low, high, integer in (("num_steps", 1, None, True), ("batch_size", 1, None, True),
                                     ("lora_rank", 1, None, True), ("min_images", 1, None, True),
                                     ("checkpoint_every", 1, None, True), ("warmup_steps", 0, None, True),
                                     ("prior_fraction", 0, 1, False), ("video_fraction", 0, 1, False),
                                     ("content_dropout", 0, 1, False), ("token_lr", 0, None, False),
                                     ("learning_rate", 0, None, False), ("min_snr_gamma", 0, None, False),
                                     ("guidance_scale", 0, None, False)):
      check_number(name, getattr(self, name), low, high, f"set {name} within [{low}, {high or 'inf'}]",
                   integer=integer, error=ConfigError)
    return self


@dataclasses.dataclass(frozen=True)
class SubjectSet:
  """The customization images at the model's size: images uint8 (N, H, W, 3), depth float32 (N, H, W) in
  [0, 1] or None (not given), captions (N,), files (N,) their names."""

  images: np.ndarray
  depth: np.ndarray | None
  captions: tuple[str, ...]
  files: tuple[str, ...]


def read_subject_images(folder: str | os.PathLike, size_hw: tuple[int, int], settings: FinetuneSettings) -> SubjectSet:
  """Reads, checks and fits the images of `folder` (see the module docstring for the rules)."""
  folder = os.fspath(folder)
  fix_folder = f"pass a folder of {settings.min_images}-30 PNG or JPEG images of the subject"
  if not os.path.isdir(folder):
    raise InputError(folder, "the images folder does not exist", fix_folder)
  names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
  images = [n for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
  stems = {os.path.splitext(n)[0] for n in images}
  strays = [n for n in names if n not in images and not (
      (n.endswith(".txt") and n[:-4] in stems) or (n.endswith(".depth.npy") and n[:-10] in stems))]
  if strays:
    raise InputError(os.path.join(folder, strays[0]), f"is not an image ({len(strays)} such files: {strays[:5]})",
                     f"keep only {', '.join(IMAGE_SUFFIXES)} images and their .txt / .depth.npy sidecars there")
  if len(images) < settings.min_images:
    raise InputError(folder, f"holds {len(images)} images, fewer than the {settings.min_images} needed",
                     "add images of the subject (Gen-1 fine-tunes on 15-30)")
  depth_files = [os.path.join(folder, os.path.splitext(n)[0] + ".depth.npy") for n in images]
  have_depth = [os.path.isfile(p) for p in depth_files]
  if any(have_depth) and not all(have_depth):
    missing = [n for n, d in zip(images, have_depth) if not d]
    raise InputError(folder, f"{len(missing)} images lack a .depth.npy sidecar (e.g. {missing[0]})",
                     "give every image its depth, or none")
  rgb, depth, captions = [], [], []
  for name, depth_file in zip(images, depth_files):
    path = os.path.join(folder, name)
    image = _read_rgb(path)
    _check_size(path, image.shape[:2], size_hw)
    rgb.append(_fit(image.astype(np.float32), size_hw).round().clip(0, 255).astype(np.uint8))
    if all(have_depth):
      depth.append(_read_depth(depth_file, image.shape[:2], size_hw))
    captions.append(_caption(os.path.join(folder, os.path.splitext(name)[0] + ".txt"), settings))
  return SubjectSet(images=np.stack(rgb), depth=np.stack(depth) if depth else None, captions=tuple(captions),
                    files=tuple(images))


def _read_rgb(path: str) -> np.ndarray:
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise InputError(path, f"not a readable image ({e})", "replace it with a PNG or JPEG file, or remove it") from e


def _check_size(path: str, hw: tuple[int, int], size_hw: tuple[int, int]) -> None:
  need = (min(size_hw) + 1) // 2
  if min(hw) < need:
    raise InputError(path, f"is {hw[1]}x{hw[0]} pixels; the short side must be at least {need} (half the "
                     f"model's {size_hw[1]}x{size_hw[0]})", "use a larger picture of the subject")


def _fit(values: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
  """(H, W, ...) -> (*size_hw, ...): a bilinear scale to cover size_hw, then the centre crop."""
  (h, w), (th, tw) = values.shape[:2], size_hw
  scale = max(th / h, tw / w)
  sh, sw = max(th, round(h * scale)), max(tw, round(w * scale))
  scaled = interpolate.resize(values, (sh, sw), axes=(0, 1))
  top, left = (sh - th) // 2, (sw - tw) // 2
  return scaled[top:top + th, left:left + tw]


def _read_depth(path: str, hw: tuple[int, int], size_hw: tuple[int, int]) -> np.ndarray:
  try:
    depth = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise InputError(path, f"not a readable .npy array ({e})", "save the depth with numpy.save") from e
  if depth.shape != tuple(hw) or not np.issubdtype(depth.dtype, np.number) or not np.isfinite(depth).all():
    raise InputError(path, f"is {depth.dtype} {depth.shape}, not finite depth of its image's {hw}",
                     "save a float (H, W) inverse depth (large = near) of the image's size")
  depth = _fit(depth.astype(np.float32), size_hw)
  low, high = float(depth.min()), float(depth.max())
  return (depth - low) / (high - low) if high > low else np.zeros_like(depth)


def _caption(path: str, settings: FinetuneSettings) -> str:
  if not os.path.isfile(path):
    return settings.caption_template.format(token=settings.token)
  with open(path, encoding="utf-8") as f:
    caption = f.read().strip()
  if settings.token not in caption.lower().split():
    raise InputError(path, f"the caption {caption[:60]!r} does not name the token {settings.token!r}",
                     "write the token into the caption where the subject is named, or remove the file")
  return caption


# ----------------------------------------------------------------------------------------------
# The token.


def add_token(tokenizer_folder: str, token: str, out_folder: str) -> int:
  """Writes `tokenizer_folder` plus `token` (one single-word token) to `out_folder`; returns its id.

  Raises ConfigError if the token is already in the vocabulary or does not come out as one id.
  """
  import tokenizers
  import transformers

  tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_folder, local_files_only=True)
  if token in tokenizer.get_vocab():
    raise ConfigError("token", f"{token!r} is already in the vocabulary of {tokenizer_folder}",
                      "choose a word the model does not know, e.g. 'sks'")
  tokenizer.add_tokens([tokenizers.AddedToken(token, single_word=True, normalized=True)])
  token_id = tokenizer.convert_tokens_to_ids(token)
  ids = tokenizer(f"a {token} x", add_special_tokens=False)["input_ids"]
  if ids.count(token_id) != 1:
    raise ConfigError(tokenizer_folder, f"this tokenizer does not read {token!r} as one new token (got {ids})",
                      "use a transformers fast tokenizer folder (CLIP BPE or the toy vocabulary)")
  with atomic_path(out_folder, is_dir=True) as tmp:
    tokenizer.save_pretrained(tmp)
  return int(token_id)


def grown_table(table: np.ndarray, token_id: int, init_row: np.ndarray) -> np.ndarray:
  """The token-embedding table (V, D) with row `token_id` set to `init_row` (grown with rows if needed)."""
  table = np.asarray(table, np.float32)
  if token_id >= table.shape[0]:
    table = np.concatenate([table, np.zeros((token_id + 1 - table.shape[0], table.shape[1]), np.float32)])
  return np.concatenate([table[:token_id], init_row[None].astype(np.float32), table[token_id + 1:]])


def _init_row(table: np.ndarray, tokenizer: Tokenizer, word: str, vocab_rows: int) -> np.ndarray:
  if not word:
    return np.asarray(table[:vocab_rows], np.float32).mean(axis=0)
  ids = [i for i in tokenizer([word])[0] if i not in tokenizer([""])[0]]
  if len(ids) != 1:
    raise ConfigError("init_word", f"{word!r} is not one known token ({ids})", "choose a word of the vocabulary")
  return np.asarray(table[ids[0]], np.float32)


# ----------------------------------------------------------------------------------------------
# The fine-tuned params: base params + what trains.


def tuned_params(base: Mapping[str, Any], trainable: Mapping[str, Any], mode: str, alpha: float,
                 token_id: int) -> dict[str, Any]:
  """The model's params from the frozen base (float32, the table already grown) and the trainable tree
  {'token_row': (D,), 'lora': adapters} or {'token_row', 'unet'}."""
  params = dict(base)
  params["unet"] = lora.merge(base["unet"], trainable["lora"], alpha) if mode == "lora" else trainable["unet"]
  flat = tree.flatten(base["text_encoder"])
  flat[TOKEN_TABLE[1:]] = flat[TOKEN_TABLE[1:]].at[token_id].set(trainable["token_row"])
  params["text_encoder"] = tree.unflatten(flat)
  return params


def _grown_config(model_dir: ModelDir, vocab_size: int) -> ModelConfig:
  config = model_dir.model.config
  return dataclasses.replace(config, text_encoder=dataclasses.replace(config.text_encoder, vocab_size=vocab_size))


def make_step(model: VideoDiffusionModel, tx: optax.GradientTransformation, settings: FinetuneSettings,
              token_id: int) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
  """step(state, base, batch, image_mode) -> (state, metrics): the training step's conditioning and loss,
  differentiated with respect to the trainable tree only (base is frozen)."""
  train_config = ml_collections.ConfigDict({"content_dropout": settings.content_dropout, "structure_dropout": 0.0})

  def step(state: TrainState, base: Mapping[str, Any], batch: Mapping[str, jax.Array], image_mode: bool):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    cond_key, loss_key = jax.random.split(rng)
    latents, structure, content = conditioning(model, train_config, base, batch, cond_key)

    def loss_fn(trainable):
      params = tuned_params(base, trainable, settings.mode, settings.lora_alpha, token_id)
      context = model.encode_content(params, **content)
      predict = lambda z_t, t: model.unet.apply({"params": params["unet"]}, z_t, t, context, structure,
                                                image_mode=image_mode)
      return diffusion.diffusion_loss(predict, latents, loss_key, model.schedule,
                                      prediction_type=model.config.prediction_type,
                                      min_snr_gamma=settings.min_snr_gamma or None)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state)
    return new, dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))

  return step


def _optimizer(settings: FinetuneSettings) -> optax.GradientTransformation:
  def adam(lr):
    schedule = optax.linear_schedule(lr / max(settings.warmup_steps, 1), lr, max(settings.warmup_steps, 1))
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))

  def labels(trainable):  # the token row at token_lr, the adapters (or the UNet) at the learning rate
    return {name: jax.tree.map(lambda _, n=name: "token" if n == "token_row" else "model", value)
            for name, value in trainable.items()}

  return optax.multi_transform({"token": adam(settings.token_lr), "model": adam(settings.learning_rate)}, labels)


@functools.lru_cache(maxsize=4)
def _compiled(config: ModelConfig, settings: FinetuneSettings, token_id: int):
  """(model, optimizer, jitted step) for one run's (model config, settings, token id), kept across calls so a
  relaunched or repeated run in the same process (a notebook, the tests) reuses the traced step."""
  model, tx = VideoDiffusionModel(config), _optimizer(settings)
  return model, tx, jax.jit(make_step(model, tx, settings, token_id), donate_argnums=0, static_argnums=3)


# ----------------------------------------------------------------------------------------------
# Batches: a pure function of (seed, step), so a resumed run draws the batches a straight one would.


class Batches:
  """batch(step) -> (numpy batch for `conditioning`, image_mode)."""

  def __init__(self, subject: SubjectSet, settings: FinetuneSettings, tokenizer: Tokenizer, prior: bool,
               size_hw: tuple[int, int], num_frames: int, stride: int):
    self.subject, self.settings, self.tokenizer, self.prior = subject, settings, tokenizer, prior
    self.size_hw, self.num_frames, self.stride = size_hw, num_frames, stride
    self.subject_tokens = tokenizer(list(subject.captions))
    if subject.depth is None:  # brightness as nearness, as `vidjax edit` without an estimator
      self.subject_depth = subject.images.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32) / 255
    else:
      self.subject_depth = subject.depth

  def __call__(self, step: int) -> tuple[dict[str, np.ndarray], bool]:
    s, rng = self.settings, np.random.default_rng([self.settings.seed, step])
    if self.prior and rng.random() < s.video_fraction:
      clips = [self._prior_clip(int(rng.integers(_TOY_TRAINING_SEEDS)), None) for _ in range(s.batch_size)]
      return self._batch(*zip(*clips)), False
    num_prior = int(round(s.batch_size * s.prior_fraction)) if self.prior else 0
    picks = rng.integers(len(self.subject.images), size=s.batch_size - num_prior)
    items = [(self.subject.images[i][None], self.subject_depth[i][None], self.subject_tokens[i]) for i in picks]
    items += [self._prior_clip(int(rng.integers(_TOY_TRAINING_SEEDS)), int(rng.integers(self.num_frames)))
              for _ in range(num_prior)]
    return self._batch(*zip(*items)), True

  def _prior_clip(self, seed: int, frame: int | None):
    """A clip (or one of its frames) of the toy world's training data, with its caption's tokens."""
    clip = toyworld.render_clip(seed, self.num_frames, *self.size_hw, self.stride)
    rgb, depth = clip.rgb, clip.disparity
    if frame is not None:
      rgb, depth = rgb[frame:frame + 1], depth[frame:frame + 1]
    return rgb, depth, self.tokenizer([clip.caption])[0]

  def _batch(self, rgb, depth, tokens) -> dict[str, np.ndarray]:
    return {"frames": np.stack(rgb).astype(np.float32) / 127.5 - 1, "depth": np.stack(depth)[..., None],
            "structure_fidelity": np.zeros(len(rgb), np.int32), "tokens": np.stack(tokens).astype(np.int32)}


# ----------------------------------------------------------------------------------------------
# The run.


@dataclasses.dataclass(frozen=True)
class Finetuned:
  """What `finetune` produced: `manifest` is finetune.json (LoRA) or the model directory's 'finetune' entry
  (full), with steps and seconds; `model` and `params` (float32) are the fine-tuned model as trained."""

  manifest: dict[str, Any]
  model: VideoDiffusionModel
  params: dict[str, Any]


def finetune(settings: FinetuneSettings, checkpoint: str | os.PathLike, images: str | os.PathLike,
             out: str | os.PathLike, *, workdir: str | os.PathLike | None = None, bar: bool | None = None,
             print_fn: Callable[[str], None] = print) -> Finetuned:
  """Fine-tunes `checkpoint` on the images of `images` and writes `out` (see the module docstring).

  Every input is checked before anything is written.
  Raises:
    InputError / ConfigError naming the input: a missing checkpoint, too few or unreadable images, bad
    settings, a work folder holding a different run.
  """
  settings.validate()
  start = time.perf_counter()
  checkpoint, out = os.path.abspath(os.fspath(checkpoint)), os.path.abspath(os.fspath(out))
  # Every cheap check first (the manifest, the images, the token), so a bad input fails before any weights load.
  manifest = _text_model_manifest(checkpoint)
  size_hw = tuple(int(x) for x in (manifest.get("video", {}).get("size") or (512, 512)))
  subject = read_subject_images(images, size_hw, settings)
  workdir = os.path.abspath(os.fspath(workdir or out + ".finetune-work"))
  if workdir == out or workdir == checkpoint:
    raise ConfigError("workdir", f"{workdir} is the output or the checkpoint", "use its own folder")
  created = not os.path.exists(workdir)
  os.makedirs(workdir, exist_ok=True)
  token_dir = os.path.join(workdir, "tokenizer")
  try:
    token_id = add_token(os.path.join(checkpoint, "tokenizer"), settings.token, token_dir)
    model_dir = load_model_dir(checkpoint)
  except BaseException:
    if created:  # a bad token or checkpoint leaves nothing behind either
      shutil.rmtree(workdir, ignore_errors=True)
    raise
  prior = settings.prior_data == "toy" or (settings.prior_data == "auto" and _is_toy(model_dir))
  context = model_dir.model.config.text_encoder.max_position_embeddings
  tokenizer = Tokenizer(token_dir, context)

  base = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), model_dir.params)
  table = np.asarray(tree.flatten(base)[TOKEN_TABLE])
  init_row = _init_row(table, model_dir.tokenizer, settings.init_word, table.shape[0])
  grown = grown_table(table, token_id, init_row)
  base = tree.unflatten({**tree.flatten(base), TOKEN_TABLE: jnp.asarray(grown)})
  model, tx, step_fn = _compiled(_grown_config(model_dir, grown.shape[0]), settings, token_id)
  key, lora_key = jax.random.split(jax.random.key(settings.seed))
  trainable = {"token_row": jnp.asarray(init_row)}
  if settings.mode == "lora":
    trainable["lora"] = lora.init(base["unet"], settings.lora_pattern, settings.lora_rank, lora_key)
  else:
    trainable["unet"] = jax.tree_util.tree_map(jnp.copy, base["unet"])
  state = TrainState(step=jnp.zeros((), jnp.int32), params=trainable, opt_state=tx.init(trainable), ema_params={},
                     rng=jax.random.key_data(key))
  run = {"settings": dataclasses.asdict(settings), "checkpoint": checkpoint, "images": list(subject.files),
         "images_sha256": hashlib.sha256(subject.images.tobytes()).hexdigest()}
  state = _resume(os.path.join(workdir, "checkpoints"), state, run, print_fn)
  with Checkpointer(os.path.join(workdir, "checkpoints"), keep=2, async_save=False) as checkpointer:
    state = _train(step_fn, settings, base, state, checkpointer, run,
                   Batches(subject, settings, tokenizer, prior, size_hw, int(model_dir.video.get("num_frames") or 8),
                           int(model_dir.video.get("stride") or 1)), bar, print_fn)
  trained = jax.device_get(state.params)
  info = {"token": settings.token, "token_id": token_id, "vocab_size": int(grown.shape[0]), "mode": settings.mode,
          "images": list(subject.files), "captions": sorted(set(subject.captions)), "prior_data": "toy" if prior else
          "none", "depth": "sidecar" if subject.depth is not None else "brightness", "num_steps": settings.num_steps,
          "seconds": round(time.perf_counter() - start, 1), "settings": dataclasses.asdict(settings)}
  if subject.depth is None:
    print_fn("note: no .depth.npy sidecars: depth was approximated by brightness (bright = near)")
  params = tuned_params(base, trained, settings.mode, settings.lora_alpha, token_id)
  if settings.mode == "lora":
    info = _write_lora(out, model_dir, trained, token_dir, info)
  else:
    _write_full(out, model_dir, model, params, token_dir, info)
  shutil.rmtree(workdir, ignore_errors=True)
  print_fn(f"fine-tuned {settings.mode} model written to {out} ({info['seconds']:.0f} s)")
  return Finetuned(manifest=info, model=model, params=params)


def _text_model_manifest(checkpoint: str) -> dict[str, Any]:
  """The checkpoint's manifest (config.json, no weights read), checked to be a whole text-conditioned model."""
  if os.path.isfile(os.path.join(checkpoint, MANIFEST)) and not os.path.isfile(
      os.path.join(checkpoint, pretrained.CONFIG_FILE)):
    with open(os.path.join(checkpoint, MANIFEST)) as f:
      base = json.load(f).get("base")
    raise ConfigError(checkpoint, "is a LoRA folder; LoRA adapters are not stacked",
                      f"fine-tune its base {base} again, or a --mode full output")
  manifest = pretrained.read_manifest(checkpoint)
  content = pretrained.CONTENTS.get(manifest.get("conditioning", {}).get("content", "text_tokens"))
  if content != "text" or "tokenizer" not in manifest.get("assets", []):
    raise ConfigError(checkpoint, "is not a text-conditioned model: there is no vocabulary to add the token to",
                      "customize a text model (the embedded toy, SD-2-depth, Make-Your-Video)")
  return manifest


def _is_toy(model_dir: ModelDir) -> bool:
  return str(model_dir.manifest.get("training", {}).get("data", "")).startswith("toy world")


def _resume(directory: str, state: TrainState, run: dict[str, Any], print_fn) -> TrainState:
  if not os.path.isdir(directory):
    return state
  with Checkpointer(directory, keep=2, async_save=False) as checkpointer:
    if checkpointer.latest_step() is None:
      return state
    saved = checkpointer.saved_config()
    if saved != json.loads(json.dumps(run)):
      raise ConfigError(os.path.dirname(directory), "holds a fine-tuning run with other settings, checkpoint or "
                        "images", "relaunch with the same arguments, or pass another --workdir (or delete it)")
    target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    state, _, _ = checkpointer.restore(target)
  # Restored arrays come back committed to Orbax's sharding; placed as a fresh state's are (uncommitted), the
  # jitted step of the run's first launch is reused instead of traced and compiled again.
  state = jax.tree.map(jnp.asarray, jax.device_get(state))
  print_fn(f"resumed from step {int(state.step)} in {os.path.dirname(directory)}")
  return state


def _train(step_fn, settings, base, state, checkpointer, run, batches, bar, print_fn) -> TrainState:
  step = int(state.step)
  progress = ProgressLine(settings.num_steps, clips_per_step=settings.batch_size, frames_per_clip=1,
                          every=50, start_step=step, desc="finetune", print_fn=print_fn, bar=bar)
  try:
    while step < settings.num_steps:
      batch, image_mode = batches(step)
      state, metrics = step_fn(state, base, batch, image_mode)
      step += 1
      frames = batch["frames"].shape[0] * batch["frames"].shape[1]
      progress.update(step, jax.device_get(metrics), clips=batch["frames"].shape[0], frames=frames)
      if step % settings.checkpoint_every == 0 or step == settings.num_steps:
        checkpointer.save(step, state, data_state={}, config=run, force=True)
  finally:
    progress.close()
  checkpointer.wait_until_finished()
  return state


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def recommended_defaults(base_manifest: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, float | int]:
  """The output's sampling_defaults: the base's, with the fine-tune's guidance_scale."""
  return {**base_manifest.get("sampling_defaults", {}), "guidance_scale": info["settings"]["guidance_scale"]}


def _write_lora(out: str, model_dir: ModelDir, trained: Mapping[str, Any], token_dir: str,
                info: dict[str, Any]) -> dict[str, Any]:
  table = np.asarray(tree.flatten(model_dir.params)[TOKEN_TABLE], np.float32)
  table = grown_table(table, info["token_id"], np.asarray(trained["token_row"]))
  base = os.path.abspath(model_dir.path)
  manifest = {"format": FORMAT, "format_version": 1, **info,
              "base": base, "base_is_embedded": base == os.path.abspath(toyworld.CHECKPOINT),
              "base_unet_sha256": _sha256(os.path.join(base, "unet.safetensors")),
              "lora": {"file": "lora.safetensors", "rank": info["settings"]["lora_rank"],
                       "alpha": info["settings"]["lora_alpha"], "pattern": info["settings"]["lora_pattern"]},
              "token_embedding": "token_embedding.safetensors",
              "sampling_defaults": recommended_defaults(model_dir.manifest, info)}
  with atomic_path(out, is_dir=True) as tmp:
    lora.save(os.path.join(tmp, "lora.safetensors"), trained["lora"], info["settings"]["lora_alpha"])
    save_file({"/".join(TOKEN_TABLE): table}, os.path.join(tmp, "token_embedding.safetensors"))
    os.chmod(os.path.join(tmp, "token_embedding.safetensors"), usual_mode())  # safetensors writes owner-only files
    shutil.copytree(token_dir, os.path.join(tmp, "tokenizer"))
    with open(os.path.join(tmp, MANIFEST), "w") as f:
      json.dump(manifest, f, indent=2)
      f.write("\n")
  return manifest


def _write_full(out: str, model_dir: ModelDir, model: VideoDiffusionModel, params: Mapping[str, Any],
                token_dir: str, info: dict[str, Any]) -> None:
  config = model.config
  components = {"unet": (config.unet, params["unet"]), "vae": (config.vae, model_dir.params["vae"]),
                "text_encoder": (config.text_encoder, params["text_encoder"])}
  if model_dir.depth_estimator is not None:
    components["depth_estimator"] = model_dir.depth_estimator
  extra = {k: v for k, v in model_dir.manifest.items()
           if k not in ("format", "format_version", "vidjax_version", "components", "assets")}
  extra["finetune"] = {**info, "base": os.path.abspath(model_dir.path)}
  extra["sampling_defaults"] = recommended_defaults(model_dir.manifest, info)
  pretrained.save_pretrained(out, components, extra=extra, assets={"tokenizer": token_dir})
