"""VideoEditPipeline: keep a video's structure (depth), change its content by a text or an image.

  pipe = VideoEditPipeline.from_pretrained()          # the embedded toy checkpoint, offline
  result = pipe("in.mp4", prompt="a red cube on a checkered floor at night", seed=0)
  result.frames   # uint8 (T, H, W, 3); result.depth: the float32 (T, H, W) depth used

What one call does, and the papers' controls it exposes:
  1. inputs: a video (its depth is estimated) and/or a depth sequence (Make-Your-Video's creation
     from rough structure); a prompt (+ negative prompt) for text models, or a content image
     (CLIP image embedding, Gen-1 image prompting) for image models; for image models whose
     checkpoint holds Gen-1's prior, a prompt too (tokenizer -> CLIP text tower -> prior sample,
     rescaled to the image embeddings' norm), or both, mixed by `content_mix`; every input and
     setting is checked here, before any model runs;
  2. depth: the checkpoint's DPT (or `depth_estimator=`), min-max over the clip, 1 = near; then
     the structure fidelity t_s blur (Gen-1 Sec. 3.3), within the range the model was trained on;
  3. sampling: DDIM with classifier-free guidance omega and, for omega_t != 1, Gen-1's temporal
     guidance (Eq. 8) in one 3N-batch call per step; eta; SDEdit `strength`; a `mask` that keeps
     the source where True (Gen-1 masked editing); clips longer than the model's training length
     through Make-Your-Video's causal window L_M (`temporal_window`), which the temporal attention
     evaluates block by block, so memory grows linearly with the frame count;
  4. decode with the VAE, frame by frame.
Steps 3 and 4 are `vidjax.sampling.generate`, the path the trainer's sample summaries take too: its
compiled sampler is cached per model, static setting (steps, temporal guidance on/off) and shape, so a
new prompt, seed, scale, t_s, window or mask at the same shapes reuses it (`sampler_traces` counts).
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import vidjax
from vidjax import toyworld
from vidjax.conditioning import structure as structure_lib
from vidjax.convert import pretrained
from vidjax.data import video_io
from vidjax.errors import ConfigError, InputError, check_number
from vidjax.models.depth import DepthEstimator
from vidjax.pipelines import edit_inputs
from vidjax.pipelines.model_dir import ModelDir, load_model_dir
from vidjax.sampling import generate
from vidjax.sampling.prior import mix_content

EMBEDDED_CHECKPOINT = toyworld.CHECKPOINT
STAGES = ("inputs", "depth", "encode", "sampling", "decode")


@dataclasses.dataclass
class EditResult:
  """What an edit returns.

  frames: uint8 (T, H, W, 3) the edited video.
  depth: float32 (T, H, W) in [0, 1] (1 = near), the depth the model saw, after the t_s blur.
  source: uint8 (T, H, W, 3) the input frames at the output size, or None for a depth-only input.
  settings: every setting as used (defaults resolved), the seed, the checkpoint and the warnings:
    what the CLI writes as its JSON sidecar.
  timings: seconds per stage (STAGES), each measured to the end of its device work.
  """

  frames: np.ndarray
  depth: np.ndarray
  source: np.ndarray | None
  settings: dict[str, Any]
  timings: dict[str, float]


@dataclasses.dataclass(frozen=True, eq=False)
class EditSettings:
  """Every input and setting of one edit, named as `__call__`'s arguments (see there), the CLI's flags
  and the sidecar's keys. `VideoEditPipeline.check_settings` validates one once and resolves its
  defaults; `VideoEditPipeline.edit` runs only such a checked one."""

  video: Any = None
  depth: Any = None
  prompt: str | None = None
  image: Any = None
  negative_prompt: str = ""
  strict_prompt: bool = False
  structure_fidelity: int = 0
  guidance_scale: float | None = None
  temporal_guidance_scale: float | None = None
  num_inference_steps: int | None = None
  eta: float | None = None
  seed: int = 0
  strength: float = 1.0
  mask: Any = None
  num_frames: int | None = None
  stride: int = 1
  start_sec: float = 0.0
  height: int | None = None
  width: int | None = None
  max_side: int | None = None
  temporal_window: int | None = None
  image_mode: bool = False
  prior_guidance_scale: float | None = None
  prior_num_inference_steps: int | None = None
  content_mix: float | None = None
  checked: bool = dataclasses.field(default=False, init=False, repr=False)  # set by check_settings only
  # What tokenizing the prompts changes or drops, found by check_settings (which tokenizes them once).
  prompt_warnings: tuple[str, ...] = dataclasses.field(default=(), init=False, repr=False)

  def as_dict(self) -> dict[str, Any]:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}


class VideoEditPipeline:
  """Edits videos with a whole-model checkpoint directory; see the module docstring."""

  def __init__(self, model_dir: ModelDir, *, depth_estimator: Any = None, progress: bool = True):
    """`depth_estimator`: a `DepthEstimator` (uint8 frames -> [0, 1] depth) for video inputs; default
    the checkpoint's bundled DPT, if any. `progress`: show a tqdm bar (each call may override)."""
    self.model_dir, self.model, self.params = model_dir, model_dir.model, jax.device_put(model_dir.params)
    self.progress = progress
    if depth_estimator is None and model_dir.depth_estimator is not None:
      config, params = model_dir.depth_estimator
      depth_estimator = DepthEstimator(config, params, **model_dir.manifest.get("depth_estimator_kwargs", {}))
    self.depth_estimator = depth_estimator

  @classmethod
  def from_pretrained(cls, path: str | os.PathLike | None = None, *, depth_estimator: Any = None,
                      progress: bool = True) -> VideoEditPipeline:
    """From a checkpoint directory (`vidjax convert ...`); None = the embedded toy checkpoint.

    `depth_estimator` may also be a converted DPT directory or a transformers DPT folder.
    """
    if path is None:
      if not os.path.isfile(os.path.join(EMBEDDED_CHECKPOINT, "config.json")):
        raise ConfigError(EMBEDDED_CHECKPOINT, "the embedded toy checkpoint is missing from this install",
                          "reinstall vidjax from its repository, or pass a checkpoint directory")
      path = EMBEDDED_CHECKPOINT
    if isinstance(depth_estimator, (str, os.PathLike)):
      depth_estimator = pretrained.load_depth_estimator(depth_estimator)
    return cls(load_model_dir(path), depth_estimator=depth_estimator, progress=progress)

  # -- facts about the model ---------------------------------------------------------------------

  @property
  def trained_frames(self) -> int:
    """The clip length the model was trained on (0 if the checkpoint does not say)."""
    return int(self.model_dir.video.get("num_frames") or 0)

  @property
  def max_temporal_window(self) -> int | None:
    """The largest L_M the block-wise causal attention represents exactly (None: no causal attention)."""
    unet = self.model.config.unet
    if not (unet.temporal_attention and unet.temporal_causal and unet.temporal_relative_position):
      return None
    return unet.temporal_relative_position + 1

  @property
  def size_multiple(self) -> int:
    """Frame sides must be multiples of this: the VAE factor times the UNet's downsampling."""
    return self.model.config.size_multiple

  @property
  def sampler_traces(self) -> int:
    """How many times a sampling loop was traced (compiled) so far."""
    return generate.sampler_traces(self.model)

  # -- the edit ----------------------------------------------------------------------------------

  def __call__(self, video: Any = None, *, depth: Any = None, prompt: str | None = None, image: Any = None,
               negative_prompt: str = "", strict_prompt: bool = False, structure_fidelity: int = 0,
               guidance_scale: float | None = None, temporal_guidance_scale: float | None = None,
               num_inference_steps: int | None = None,
               eta: float | None = None, seed: int = 0,
               strength: float = 1.0, mask: Any = None, num_frames: int | None = None, stride: int = 1,
               start_sec: float = 0.0, height: int | None = None, width: int | None = None,
               max_side: int | None = None, temporal_window: int | None = None, image_mode: bool = False,
               prior_guidance_scale: float | None = None, prior_num_inference_steps: int | None = None,
               content_mix: float | None = None, progress: bool | None = None) -> EditResult:
    """Edits one clip.

    Args:
      video: path or uint8 (T, H, W, 3) frames; its depth is estimated unless `depth` is given.
      depth: path (.npy or a grayscale video, white = near) or array (T, H, W) of inverse depth:
        the structure to follow (with `video`, it replaces the estimate).
      prompt / image: the content: a prompt for text models, a content image for image-embedding
        models (a path or uint8 array; or several, as a list, an (N, H, W, 3) array or a folder, whose
        CLIP embeddings are averaged); negative_prompt replaces the empty prompt in guidance (text
        models only). An image-embedding model whose checkpoint holds a prior takes a prompt too:
        its prior samples an image embedding from the prompt's CLIP text encoding (noise from the
        seed, `sampling.prior.prior_key`). Words the tokenizer does not know (read as its unk token)
        and text past its context are named in a warning.
      strict_prompt: refuse such prompts instead (InputError naming the words).
      structure_fidelity: t_s, an int within the range the checkpoint was trained on.
      guidance_scale: omega (>= 0); temporal_guidance_scale: omega_t (>= 0; 1 = plain CFG).
      num_inference_steps, eta, seed: DDIM settings and the noise seed.
        guidance_scale, temporal_guidance_scale, num_inference_steps and eta default to the
        checkpoint's `sampling_defaults`, else 5, 1, 25 and 0 (`sampling.settings.SAMPLING_DEFAULTS`).
      strength: SDEdit strength in (0, 1]; below 1 starts from the noised source video.
      mask: keep the source where True (H, W) or (T, H, W), at the input's size; needs `video`.
      num_frames, stride, start_sec: which frames (default: the trained clip length, or all the
        frames of a depth array); more than the trained length runs through the causal window.
      height, width: an exact output size (multiples of `size_multiple`); else the input is scaled
        to `max_side` (default: the trained size, else 512) and centre-cropped to multiples.
      temporal_window: L_M for causal models, 1 <= L_M <= max_temporal_window (default: the
        checkpoint's, else the trained clip length), or L_M >= num_frames (given) for the whole past:
        full causal attention over every frame (Make-Your-Video's comparison for long clips).
      image_mode: sample with the per-frame image model, the temporal layers off (the model Gen-1's
        image batches train; Make-Your-Video's Table 3 baseline); needs temporal_guidance_scale 1.
      prior_guidance_scale, prior_num_inference_steps: the prior's classifier-free guidance (>= 0; 1 =
        the conditional prior alone) and DDIM steps, for a prompt to an image-embedding model (default:
        the checkpoint's `sampling_defaults`, else 1 and 64).
      content_mix: with both image and prompt (image-embedding models with a prior), the share of the
        prompt's embedding in the content, in [0, 1] (0 = the image's, 1 = the prompt's; default 0.5),
        mixed by slerp (`sampling.prior.mix_content`).
      progress: show the progress bar (default: the pipeline's setting).
    Returns:
      EditResult.
    Raises:
      InputError / ConfigError naming the input, the problem and the fix; nothing runs before all
      inputs are checked.
    """
    arguments = {name: value for name, value in locals().items() if name not in ("self", "progress")}
    return self.edit(self.check_settings(EditSettings(**arguments)), progress=progress)

  def edit(self, settings: EditSettings, *, progress: bool | None = None) -> EditResult:
    """Runs an edit whose settings `check_settings` returned (checked once, before any model work)."""
    if not settings.checked:
      raise ConfigError("settings", "were not checked by this pipeline", "pass pipe.check_settings(settings)")
    s = settings
    show = self.progress if progress is None else progress
    bar = _progress_bar(show)
    timings, notes = {}, list(s.prompt_warnings)
    clock = time.perf_counter()

    def done(stage: str, value: Any = None) -> Any:
      nonlocal clock
      jax.block_until_ready(value)
      now = time.perf_counter()
      timings[stage] = timings.get(stage, 0.0) + now - clock
      clock = now
      bar.update(1)
      bar.set_postfix_str(stage)
      return value

    frames, raw_depth, keep, content_images = self._read_inputs(s, notes)
    t = len(frames) if frames is not None else len(raw_depth)
    self._check_length(t, s)
    done("inputs")
    if raw_depth is None and self.depth_estimator is not None:
      raw_depth = np.asarray(self.depth_estimator(frames))
    elif raw_depth is None:
      # No estimator to run offline: brightness as nearness keeps the layout of edges, nothing more.
      notes.append("this checkpoint bundles no depth estimator: depth was approximated by brightness (bright = "
                   "near); pass depth= (array, .npy or depth video) or depth_estimator= a DPT folder for real depth")
      raw_depth = edit_inputs.read_depth_input(frames.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114],
                                                                                      np.float32),
                                               num_frames=None, stride=1, start_sec=0.0)
    used_depth = np.asarray(structure_lib.augment_structure(raw_depth, int(s.structure_fidelity)))
    done("depth", used_depth)

    hw = used_depth.shape[1:]
    factor = self.model.config.vae.downsample_factor
    latent_hw = (hw[0] // factor, hw[1] // factor)
    cond = generate.encode_structure(self.model, self.params, used_depth[None, ..., None],
                                     np.full((1,), s.structure_fidelity, np.int32), latent_hw)
    context, null_context = self._encode_content(s, content_images)
    source_latents = None
    if frames is not None and (keep is not None or s.strength < 1.0):
      source_latents = generate.encode_frames(self.model, self.params, frames[None])
    done("encode", (cond, context, null_context, source_latents))

    keep_mask = None if keep is None else jnp.asarray(_latent_mask(keep, t, latent_hw))[None]
    latents = generate.sample_latents(
        self.model, self.params, structure=cond, context=context, null_context=null_context,
        shape=(1, t, *latent_hw, self.model.config.vae.latent_channels), seed=s.seed,
        num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale,
        temporal_guidance_scale=s.temporal_guidance_scale, eta=s.eta,
        temporal_window=self._sampler_window(s.temporal_window), scheduler=self.model_dir.scheduler,
        image_mode=s.image_mode,
        init_latents=source_latents, strength=s.strength, keep_mask=keep_mask,
        source_latents=source_latents)
    done("sampling", latents)
    out = generate.decode_frames(self.model, self.params, latents)[0]
    done("decode", out)
    bar.close()
    for note in notes:
      warnings.warn(note, stacklevel=2)
    depth_source = _describe(s.depth) if s.depth is not None else (
        "estimated" if self.depth_estimator is not None else "brightness")
    record = {**s.as_dict(), "video": _describe(s.video), "depth": depth_source, "image": _describe(s.image),
              "mask": _describe(s.mask), "num_frames": t, "height": hw[0], "width": hw[1],
              "checkpoint": os.path.abspath(self.model_dir.path), "vidjax_version": vidjax.__version__,
              "warnings": notes}
    return EditResult(frames=out, depth=used_depth.astype(np.float32), source=frames, settings=record,
                      timings=timings)

  # -- steps -------------------------------------------------------------------------------------

  def check_settings(self, settings: EditSettings | None = None, /, **changes) -> EditSettings:
    """Checks every setting that needs no file reading, once: `settings` (default EditSettings()) with
    `changes` (`__call__`'s keyword arguments) in place. Returns a checked copy with defaults resolved,
    what `edit` runs. Raises InputError naming the first bad one."""
    config = self.model.config
    s = dataclasses.replace(settings or EditSettings(), **changes).as_dict()
    prompt_warnings = []
    s.update({name: value for name, value in self.model_dir.sampling_defaults.items() if s.get(name) is None})
    if s["video"] is None and s["depth"] is None:
      raise InputError("video / depth", "neither was given", "pass a video to edit, or a depth sequence to follow")
    if s["content_mix"] is not None and (s["prompt"] is None or s["image"] is None):
      given = "only a prompt" if s["prompt"] is not None else "only an image" if s["image"] is not None else "neither"
      raise InputError("content_mix", f"mixes an image's and a prompt's content, but {given} was given",
                       "pass both image= and prompt= (an image-embedding model with a prior), or drop content_mix")
    if config.content == "text":
      if s["image"] is not None:
        raise InputError("image", "a content image was given, but this model is conditioned on text",
                         "pass prompt= instead (this checkpoint has no CLIP image tower)")
      if s["prompt"] is None or not isinstance(s["prompt"], str):
        raise InputError("prompt", "missing (this model is conditioned on text)", "pass prompt='...'")
      if not isinstance(s["negative_prompt"], str):
        raise InputError("negative_prompt", f"{s['negative_prompt']!r} is not a string", "pass negative_prompt='...'")
      s.update(prior_guidance_scale=None, prior_num_inference_steps=None)  # no prior: not used
    else:
      self._check_image_content(s)
    if s["prompt"] is not None:
      if not isinstance(s["strict_prompt"], (bool, np.bool_)):
        raise InputError("strict_prompt", f"{s['strict_prompt']!r} is not True or False", "pass strict_prompt=True")
      prompt_warnings = self._prompt_notes(s["prompt"], s["negative_prompt"], s["strict_prompt"])  # raises if strict
    low, high = self.model_dir.structure_fidelity_range
    check_number("structure_fidelity", s["structure_fidelity"], low, high,
                 f"this checkpoint was trained with t_s in [{low}, {high}]; pass a value in that range", integer=True)
    check_number("guidance_scale", s["guidance_scale"], 0.0, None, "pass omega >= 0 (1 = no guidance)")
    check_number("temporal_guidance_scale", s["temporal_guidance_scale"], 0.0, None,
                 "pass omega_t >= 0 (1 = off, > 1 = smoother, < 1 = more per-frame detail)")
    if not isinstance(s["image_mode"], (bool, np.bool_)):
      raise InputError("image_mode", f"{s['image_mode']!r} is not True or False", "pass image_mode=True")
    if s["image_mode"] and s["temporal_guidance_scale"] != 1:
      raise InputError("image_mode", f"the image model has no video model to guide towards (temporal_guidance_scale "
                       f"{s['temporal_guidance_scale']:g})", "pass temporal_guidance_scale=1 with image_mode")
    check_number("num_inference_steps", s["num_inference_steps"], 1, config.num_train_timesteps,
                 f"pass 1 .. {config.num_train_timesteps} steps", integer=True)
    check_number("eta", s["eta"], 0.0, 1.0, "pass eta in [0, 1] (0 = deterministic DDIM)")
    check_number("seed", s["seed"], 0, 2 ** 63 - 1, "pass a non-negative integer seed", integer=True)
    check_number("strength", s["strength"], 0.0, 1.0, "pass strength in (0, 1] (1 = start from pure noise)")
    if s["strength"] <= 0:
      raise InputError("strength", f"{s['strength']} leaves nothing to denoise", "pass strength in (0, 1]")
    if s["video"] is None and (s["strength"] < 1.0 or s["mask"] is not None):
      raise InputError("strength / mask", "SDEdit and masked editing need the source video, but only depth was given",
                       "pass video= too, or strength=1 and no mask")
    check_number("stride", s["stride"], 1, None, "pass stride >= 1", integer=True)
    check_number("start_sec", s["start_sec"], 0.0, None, "pass start_sec >= 0")
    if s["num_frames"] is not None:
      check_number("num_frames", s["num_frames"], 1, None, "pass num_frames >= 1", integer=True)
    if s["video"] is not None and s["num_frames"] is None:
      s["num_frames"] = self.trained_frames or None
    if (s["height"] is None) != (s["width"] is None):
      raise InputError("height / width", "only one was given", "pass both, or neither to keep the aspect ratio")
    m = self.size_multiple
    if s["height"] is not None:
      for name in ("height", "width"):
        check_number(name, s[name], m, None, f"pass a multiple of {m}", integer=True)
        if s[name] % m:
          raise InputError(name, f"{s[name]} is not a multiple of {m}", f"pass a multiple of {m} (the model's size "
                           "factor), or leave height and width unset to fit the input automatically")
    elif s["max_side"] is None:
      s["max_side"] = max(self.model_dir.video.get("size") or [512])
    else:
      check_number("max_side", s["max_side"], m, None, f"pass max_side >= {m}", integer=True)
    window = s["temporal_window"]
    limit = self.max_temporal_window
    if window is not None and limit is None:
      raise InputError("temporal_window", f"L_M = {window}, but this model has no causal temporal attention",
                       "leave temporal_window unset")
    if limit is not None:
      if window is None:  # the checkpoint's L_M, else the trained length, within what the model represents
        window = min(self.model_dir.video.get("temporal_window") or self.trained_frames or limit, limit)
      whole_past = s["num_frames"] is not None and window >= s["num_frames"]
      check_number("temporal_window", window, 1, None if whole_past else limit,
                   f"pass 1 <= L_M <= {limit} (the relative-position range of this model's temporal attention + 1), "
                   "or L_M >= num_frames for the whole past", integer=True)
      s["temporal_window"] = int(window)
    checked = EditSettings(**s)
    object.__setattr__(checked, "checked", True)  # frozen: only this method marks a copy as checked
    object.__setattr__(checked, "prompt_warnings", tuple(prompt_warnings))
    return checked

  def _check_image_content(self, s: dict[str, Any]) -> None:
    """An image-embedding model's content settings (in place: the prior's defaults resolved or cleared)."""
    prior = self.model_dir.prior
    if s["negative_prompt"]:
      raise InputError("negative_prompt", "was given, but this model is conditioned on CLIP image embeddings, whose "
                       "guidance has no negative content", "drop negative_prompt")
    if s["prompt"] is not None and prior is None:
      raise ConfigError("prompt", "a prompt was given, but this model is conditioned on CLIP image embeddings and "
                        f"its checkpoint ({self.model_dir.path}) holds no prior to turn text into one",
                        "pass image= a content image, or a checkpoint exported with its prior (vidjax convert run "
                        "WORKDIR OUT --prior PRIOR_WORKDIR)")
    if s["prompt"] is None and s["image"] is None:
      also = " or prompt='...' (its prior turns text into an image embedding)" if prior is not None else ""
      raise InputError("image", "missing (this model is conditioned on an image embedding)",
                       f"pass image= a content image path or uint8 array{also}")
    if s["prompt"] is not None and not isinstance(s["prompt"], str):
      raise InputError("prompt", f"{s['prompt']!r} is not a string", "pass prompt='...'")
    if s["prompt"] is None:  # the prior does not run: its settings are not used
      s.update(prior_guidance_scale=None, prior_num_inference_steps=None)
      return
    check_number("prior_guidance_scale", s["prior_guidance_scale"], 0.0, None,
                 "pass the prior's guidance >= 0 (1 = the conditional prior alone)")
    steps = prior.prior.config.num_train_timesteps
    check_number("prior_num_inference_steps", s["prior_num_inference_steps"], 1, steps,
                 f"pass 1 .. {steps} prior steps", integer=True)
    if s["image"] is not None:
      if s["content_mix"] is None:
        s["content_mix"] = 0.5
      check_number("content_mix", s["content_mix"], 0.0, 1.0,
                   "pass content_mix in [0, 1] (0 = the image's content, 1 = the prompt's)")

  def _prompt_notes(self, prompt: str, negative_prompt: str, strict_prompt: bool) -> list[str]:
    """Warnings naming what tokenizing the prompts changes or drops; InputError instead under strict_prompt."""
    tokenizer = self.model_dir.tokenizer
    notes = []
    for name, losses in zip(("prompt", "negative_prompt"), tokenizer.losses([prompt, negative_prompt])):
      text = prompt if name == "prompt" else negative_prompt
      if losses.unknown:
        words = ", ".join(repr(w) for w in losses.unknown)
        if strict_prompt:
          known = [w for w in tokenizer.known_words() if w.isalpha()]
          # A small word-level vocabulary (the toy one: 32 words) is listed whole; a larger one by its folder.
          vocabulary = ", ".join(known) if len(known) <= 40 else (
              f"e.g. {', '.join(known[:20])}; the whole vocabulary is in {tokenizer.folder}")
          raise InputError(f"{name} {text!r}", f"the tokenizer does not know {words}",
                           f"use words the tokenizer knows ({vocabulary}), or drop strict_prompt (--strict-prompt) "
                           "to run with them as <unk>")
        notes.append(f"{name} {text!r}: the tokenizer does not know {words}; the model read them as its unknown-word "
                     "token <unk> (pass strict_prompt / --strict-prompt to refuse such prompts)")
      if losses.truncated:
        context = f"the {tokenizer.context_length}-token context"
        if strict_prompt:
          raise InputError(f"{name} {text!r}", f"is longer than {context}: {losses.truncated!r} would be dropped",
                           "shorten it, or drop strict_prompt (--strict-prompt) to run without its end")
        notes.append(f"{name} {text!r} is longer than {context}; dropped: {losses.truncated!r}")
    return notes

  def _read_inputs(self, s: EditSettings, notes: list[str]):
    """-> frames uint8 (T, H, W, 3) | None, depth float32 (T, H, W) | None, keep bool (T|1, H, W) | None,
    the content images (a list of uint8 (H, W, 3)) | None."""
    frames = depth = keep = None
    select = dict(num_frames=s.num_frames, stride=s.stride, start_sec=s.start_sec)
    if s.video is not None:
      frames = edit_inputs.read_video_input(s.video, **select)
    if s.depth is not None:  # selected as the video's frames are
      depth = edit_inputs.read_depth_input(s.depth, **select)
      if frames is not None and len(depth) != len(frames):
        raise InputError("depth", f"has {len(depth)} frames for a {len(frames)}-frame video",
                         "pass one depth map per selected video frame")
    source_hw = (frames if frames is not None else depth).shape[1:3]
    if s.mask is not None:
      keep = edit_inputs.read_mask_input(s.mask, num_frames=len(frames), size=source_hw)
    content_images = edit_inputs.read_image_inputs(s.image) if s.image is not None else None
    # One geometry for frames, depth and mask: scale and centre-crop to the model's size multiple.
    m = self.size_multiple
    if s.height is not None:
      target = (s.height, s.width)
      scaled = edit_inputs.scaled_size(source_hw, target, None)
      if frames is not None:
        frames = video_io.resize_center_crop(frames, *target)
      if tuple(source_hw) != target:
        notes.append(f"input resized and centre-cropped from {source_hw[1]}x{source_hw[0]} to {target[1]}x{target[0]}")
    else:
      # Names the real cause: frames too small, or a thin strip that max_side shrinks below the multiple.
      video_io.check_fits_multiple(*source_hw, m, s.max_side, name="input")
      scaled = edit_inputs.scaled_size(source_hw, source_hw, s.max_side)
      target = (scaled[0] // m * m, scaled[1] // m * m)
      if frames is not None:
        frames, message = video_io.fit_to_multiple(frames, m, s.max_side)
        if message:
          notes.append(message)
      elif tuple(target) != tuple(source_hw):
        notes.append(f"depth changed from {source_hw[1]}x{source_hw[0]} to {target[1]}x{target[0]}: sides must be "
                     f"multiples of {m} and at most {s.max_side}")
    if depth is not None:
      depth = np.clip(edit_inputs.fit_maps(depth, scaled, target), 0.0, 1.0)
    if keep is not None:
      keep = edit_inputs.fit_maps(keep.astype(np.float32), scaled, target) > 0.5
    return frames, depth, keep, content_images

  def _sampler_window(self, window: int | None) -> int | None:
    """The checked L_M as the sampler takes it: beyond the band's exact range (check_settings allows that
    only for L_M >= num_frames) it is None, the whole past in one causal mask."""
    limit = self.max_temporal_window
    return None if window is not None and limit is not None and window > limit else window

  def _check_length(self, t: int, s: EditSettings) -> None:
    trained = self.trained_frames
    if trained and t > trained and self.max_temporal_window is None:
      raise InputError(f"{t} frames", f"more than the {trained} this model was trained on, and it has no causal "
                       "temporal window to slide", f"pass num_frames <= {trained}")
    max_frames = self.model.config.unet.temporal_max_frames
    if max_frames and t > max_frames:
      raise InputError(f"{t} frames", f"more than the model's {max_frames} frame-index embeddings",
                       f"pass num_frames <= {max_frames}")

  def _encode_content(self, s: EditSettings, images: list[np.ndarray] | None) -> tuple[jax.Array, jax.Array]:
    """-> (context, null context); an empty negative prompt is the model's own null content."""
    if self.model.config.content == "text":
      negative = self.model_dir.tokenizer([s.negative_prompt]) if s.negative_prompt else None
      return generate.encode_content(self.model, self.params, tokens=self.model_dir.tokenizer([s.prompt]),
                                     negative_tokens=negative)
    embeds = None if images is None else generate.embed_images(self.model, self.params, images)
    if s.prompt is not None:
      from_prompt = self.model_dir.prior(self.model_dir.tokenizer([s.prompt]), s.seed,
                                         guidance_scale=s.prior_guidance_scale,
                                         num_inference_steps=s.prior_num_inference_steps)
      embeds = from_prompt if embeds is None else mix_content(embeds, from_prompt, s.content_mix)
    return generate.encode_content(self.model, self.params, image_embeds=embeds)


def _latent_mask(keep: np.ndarray, t: int, latent_hw: tuple[int, int]) -> np.ndarray:
  """bool (T|1, H, W) -> float32 (T, h, w, 1): a latent cell is kept where most of its pixels are."""
  n, h, w = keep.shape
  fh, fw = h // latent_hw[0], w // latent_hw[1]
  cells = keep.reshape(n, latent_hw[0], fh, latent_hw[1], fw).mean(axis=(2, 4)) >= 0.5
  return np.broadcast_to(cells, (t, *latent_hw))[..., None].astype(np.float32)


def _describe(value: Any) -> Any:
  """A JSON-able stand-in for an input: a path as given, an array by shape and dtype."""
  if value is None or isinstance(value, (str, int, float)):
    return value
  if isinstance(value, (list, tuple)):
    return [_describe(item) for item in value]
  if isinstance(value, os.PathLike):
    return os.fspath(value)
  array = np.asarray(value)
  return f"array {array.dtype} {list(array.shape)}"


def _progress_bar(enabled: bool):
  from tqdm.auto import tqdm
  return tqdm(total=len(STAGES), desc="vidjax edit", unit="stage", disable=not enabled, leave=False)
