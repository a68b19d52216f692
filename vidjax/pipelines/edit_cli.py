"""`vidjax edit`: keep a video's depth structure, change its content by a prompt or an image.

  vidjax edit --video in.mp4 --prompt "a red cube on a checkered floor at night" --out edit.mp4
  vidjax edit --depth depth.npy --prompt "..." --num-frames 32 --temporal-window 8   # depth only, long clip
  vidjax edit --prompt "a blue sphere on a grass floor"   # a toy-world clip, the embedded toy checkpoint
  vidjax edit --video in.mp4 --prompt "..." --sweep temporal_guidance_scale=0.5,1,1.5 --out tg.mp4
  vidjax edit --checkpoint gen1_with_prior --image ref.png --prompt "..." --sweep content_mix=0,0.5,1 --out mix.mp4

Every flag maps onto `VideoEditPipeline.__call__` (or `from_pretrained`) under the same name, dashes for
underscores (`--temporal-guidance-scale` is `temporal_guidance_scale`; the older `--temporal-guidance`
and `--steps` are aliases); unset flags keep the pipeline's defaults. Settings are checked once, every
sweep value before the first edit. With neither --video nor --depth, a toy-world clip (`toyworld.render_clip`,
--toy-seed) at the checkpoint's trained size, length and stride is the input.

Outputs, for --out STEM.SUFFIX (.mp4 or .gif):
  STEM.SUFFIX       the edited video at --fps (default: the input video's rate / --stride, else 8)
  STEM_grid.SUFFIX  input | depth | output side by side (depth | output for a depth-only input)
  STEM.json         every setting as used (defaults resolved, seed, checkpoint, warnings), "outputs",
                    "timings" (seconds per stage) and "command"
With --sweep NAME=V1,V2,...: one edit per value, all else equal; STEM.SUFFIX is then the labelled grid
input | depth | NAME=V1 | NAME=V2 ... (as Gen-1's Figs. 4 and 10), and STEM.json holds one settings
entry per value.

The output name and folder, the sweep, and that input files exist and the video opens are checked before
the checkpoint loads; every other setting and every sweep value before the first edit. Outputs are written
only after every edit finished, each under a temporary name renamed at the end, so an error or a
kill never leaves a partial file at an output path. Exit status: 0 on success; 2 (`EXIT_ERROR`) on
bad input, with a one-line message and nothing written.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import sys
import warnings
from typing import Any

import numpy as np

from vidjax import toyworld
from vidjax.data import video_io
from vidjax.errors import EXIT_ERROR, EXIT_OK, InputError, VidjaxError, atomic_path, is_number
from vidjax.pipelines import edit_inputs
from vidjax.pipelines.edit import EditResult, VideoEditPipeline
from vidjax.sampling.settings import NUMERIC_SETTINGS, SAMPLING_DEFAULTS, parse_setting

OUTPUT_SUFFIXES = (".mp4", ".gif")
DEFAULT_FPS = 8.0
DEFAULT_TOY_SEED = 1_000_000  # held out: toy training uses scene seeds 0..2047 (vidjax.eval.toy_edit)
# Settings `--sweep` varies, with the type their values parse as.
SWEEPABLE = NUMERIC_SETTINGS
# The keyword arguments of VideoEditPipeline.__call__ with their defaults (the one source of defaults).
_CALL_DEFAULTS = {name: p.default for name, p in inspect.signature(VideoEditPipeline.__call__).parameters.items()
                  if name not in ("self", "progress")}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="vidjax edit", description=__doc__.split("\n\n")[0],
                                   epilog="Outputs, sweeps and exit status: see `python -m pydoc "
                                   "vidjax.pipelines.edit_cli`.")
  d, m = _CALL_DEFAULTS, SAMPLING_DEFAULTS
  model = parser.add_argument_group("model")
  model.add_argument("--checkpoint", metavar="DIR", help="checkpoint directory (default: the embedded toy model)")
  model.add_argument("--depth-model", metavar="DIR", dest="depth_estimator",
                     help="a DPT folder (vidjax or transformers) to estimate depth with (default: the checkpoint's)")
  inputs = parser.add_argument_group("inputs")
  inputs.add_argument("--video", metavar="PATH", help="the video to edit")
  inputs.add_argument("--depth", metavar="PATH",
                      help="the structure: inverse depth as .npy (T, H, W) or a grayscale video, white = near "
                      "(default: estimated from --video)")
  inputs.add_argument("--prompt", metavar="TEXT", help="the new content, for text-conditioned models, and for "
                      "image-embedding models whose checkpoint holds Gen-1's prior (text -> image embedding)")
  inputs.add_argument("--negative-prompt", metavar="TEXT", help="replaces the empty prompt in classifier-free guidance")
  inputs.add_argument("--strict-prompt", action="store_true", default=None,
                      help="refuse a prompt with words the tokenizer does not know, or longer than its context "
                      "(default: run, and warn naming them)")
  inputs.add_argument("--image", metavar="PATH", nargs="+",
                      help="the new content as an image, for image-embedding models; several images or a folder "
                      "of them are one content (their CLIP embeddings averaged, as Gen-1's customization sets)")
  inputs.add_argument("--mask", metavar="PATH", help="image or video at the input's size, white where the source "
                      "is kept (Gen-1 masked editing)")
  inputs.add_argument("--toy-seed", type=int, metavar="INT", default=DEFAULT_TOY_SEED,
                      help=f"with neither --video nor --depth, edit this toy-world clip (default {DEFAULT_TOY_SEED})")
  sampling = parser.add_argument_group("sampling (defaults: the pipeline's)")
  sampling.add_argument("--structure-fidelity", type=int, metavar="INT",
                        help=f"t_s, within the checkpoint's trained range (default {d['structure_fidelity']})")
  sampling.add_argument("--guidance-scale", type=float, metavar="W",
                        help=f"omega (default: the checkpoint's, else {m['guidance_scale']})")
  sampling.add_argument("--temporal-guidance-scale", "--temporal-guidance", type=float, metavar="W_T",
                        dest="temporal_guidance_scale", help="omega_t: 1 off, > 1 smoother (default: the "
                        f"checkpoint's, else {m['temporal_guidance_scale']})")
  sampling.add_argument("--num-inference-steps", "--steps", type=int, metavar="N", dest="num_inference_steps",
                        help=f"DDIM steps (default: the checkpoint's, else {m['num_inference_steps']})")
  sampling.add_argument("--eta", type=float, metavar="ETA",
                        help=f"DDIM eta, 0 = deterministic (default: the checkpoint's, else {m['eta']})")
  sampling.add_argument("--seed", type=int, metavar="INT", help=f"noise seed (default {d['seed']})")
  sampling.add_argument("--strength", type=float, metavar="S",
                        help=f"SDEdit strength in (0, 1] (default {d['strength']})")
  sampling.add_argument("--temporal-window", type=int, metavar="L_M",
                        help="causal receptive field for clips longer than trained (default: the checkpoint's); "
                        ">= --num-frames attends to the whole past")
  sampling.add_argument("--image-mode", action="store_true", default=None,
                        help="sample with the per-frame image model (the temporal layers off)")
  prior = parser.add_argument_group("prior (a prompt to an image-embedding model with Gen-1's prior)")
  prior.add_argument("--prior-guidance-scale", type=float, metavar="W",
                     help=f"the prior's guidance (default: the checkpoint's, else {m['prior_guidance_scale']})")
  prior.add_argument("--prior-num-inference-steps", type=int, metavar="N",
                     help=f"the prior's DDIM steps (default: the checkpoint's, else {m['prior_num_inference_steps']})")
  prior.add_argument("--content-mix", type=float, metavar="M",
                     help="with both --image and --prompt: the prompt's share of the content, 0 = the image's, "
                     "1 = the prompt's (slerp; default 0.5)")
  frames = parser.add_argument_group("frames")
  frames.add_argument("--num-frames", type=int, metavar="T", help="frames to edit (default: the trained clip length)")
  frames.add_argument("--stride", type=int, metavar="N", help="keep every stride-th input frame (default 1)")
  frames.add_argument("--start-sec", type=float, metavar="SEC", help="first input frame's time (default 0)")
  frames.add_argument("--height", type=int, metavar="H",
                      help="exact output height (with --width; multiples of the model's)")
  frames.add_argument("--width", type=int, metavar="W", help="exact output width (with --height)")
  frames.add_argument("--max-side", type=int, metavar="PIXELS",
                      help="scale the input down to this long side (default: trained size)")
  output = parser.add_argument_group("output")
  output.add_argument("--out", default="edit.mp4", metavar="PATH",
                      help="the edited video, .mp4 or .gif (default edit.mp4); the grid and the .json go beside it")
  output.add_argument("--fps", type=float, metavar="FPS",
                      help="output frame rate (default: the input video's / --stride, else 8)")
  output.add_argument("--sweep", metavar="NAME=V1,V2,...",
                      help=f"one edit per value, written as one labelled grid; NAME: {', '.join(SWEEPABLE)}")
  output.add_argument("--no-progress", action="store_true", help="no progress bar")
  return parser


def parse_sweep(text: str) -> tuple[str, list[int | float]]:
  """'temporal-guidance=0.5,1,1.5' -> ('temporal_guidance_scale', [0.5, 1.0, 1.5]); InputError when malformed."""
  return parse_setting(text, "--sweep", SWEEPABLE)


def output_paths(out: str, *, sweep: bool) -> dict[str, str]:
  """--out STEM.SUFFIX -> {'video': out, 'grid': STEM_grid.SUFFIX, 'sidecar': STEM.json} (sweep: grid = out)."""
  stem, suffix = os.path.splitext(out)
  if suffix.lower() not in OUTPUT_SUFFIXES:
    raise InputError(out, f"unsupported output type {suffix or '(no suffix)'!r}", "name the output .mp4 or .gif")
  if sweep:
    return {"grid": out, "sidecar": stem + ".json"}
  return {"video": out, "grid": f"{stem}_grid{suffix}", "sidecar": stem + ".json"}


def _check_outputs(paths: dict[str, str], inputs: list[str]) -> None:
  """The output folder exists or can be created, no output is a folder or one of the inputs; creates nothing."""
  folder = os.path.dirname(os.path.abspath(paths["sidecar"]))
  existing = folder
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise InputError(folder, f"cannot be created: {existing} is a file", "choose an --out inside a folder")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise InputError(folder, "is not writable" if existing == folder else f"cannot be created in {existing}",
                     "choose an --out in a folder you can write to")
  sources = {os.path.realpath(p) for p in inputs}
  for path in paths.values():
    if os.path.isdir(path):
      raise InputError(path, "is a folder", "choose an --out file name (.mp4 or .gif)")
    if os.path.realpath(path) in sources:
      raise InputError(path, "is also an input: writing it would replace the input", "choose another --out")


def _check_args(args: argparse.Namespace) -> None:
  """Arguments the pipeline does not see (or sees only after loading the model), checked first."""
  for path, kind in ((args.video, "video"), (args.depth, "depth"), (args.mask, "mask")):
    if path is not None:
      edit_inputs.existing_file(path, kind)  # the pipeline's own message
  for path in args.image or ():
    if not os.path.isdir(path):  # a folder of images is read (and checked) by the pipeline
      edit_inputs.existing_file(path, "image")
  for name, path in (("--checkpoint", args.checkpoint), ("--depth-model", args.depth_estimator)):
    if path is not None and not os.path.isdir(path):
      raise InputError(path, f"the {name} folder does not exist", f"pass an existing folder as {name}")
  if args.fps is not None and not (is_number(args.fps) and args.fps > 0):
    raise InputError("--fps", f"{args.fps!r} is not a positive frame rate", "pass --fps > 0")
  for name in ("num_frames", "stride"):  # the toy clip and the output rate use them before the pipeline
    value = getattr(args, name)
    if value is not None and value < 1:
      raise InputError(f"--{name.replace('_', '-')}", f"{value} is not positive", "pass a value >= 1")
  if args.video is None and args.depth is None:  # the toy clip
    if args.toy_seed < 0:
      raise InputError("--toy-seed", f"{args.toy_seed} is negative", "pass a seed >= 0")
    if args.start_sec:
      raise InputError("--start-sec", "applies to --video or --depth files; the toy clip starts at its first frame",
                       "drop --start-sec, or pass --video")


def _output_fps(args: argparse.Namespace) -> float:
  """--fps, else the input video's rate divided by --stride (real-time playback), else DEFAULT_FPS."""
  if args.fps is not None:
    return float(args.fps)
  source = args.video
  if source is None and args.depth is not None and not args.depth.lower().endswith(".npy"):
    source = args.depth  # a depth video has a rate too
  if source is None:
    return DEFAULT_FPS
  rate = video_io.probe(source).fps  # also refuses a non-video before the model loads
  return rate / (args.stride or 1) if rate else DEFAULT_FPS


def _toy_inputs(pipe: VideoEditPipeline, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
  """A toy-world clip at the checkpoint's trained size, length and stride -> (call arguments, description)."""
  video = pipe.model_dir.video
  size = video.get("size") or []
  if args.height and args.width:
    height, width = args.height, args.width
  elif len(size) == 2 and all(size):
    height, width = (int(s) for s in size)
  else:  # the checkpoint does not say: the toy world's default size
    height = width = 64
  num_frames = args.num_frames or pipe.trained_frames or 8
  # The user's --stride applies to the rendered time steps (the clip then needs no striding).
  stride = int(video.get("stride") or 1) * (args.stride or 1)
  clip = toyworld.render_clip(args.toy_seed, num_frames=num_frames, height=height, width=width, stride=stride)
  description = f"toy world clip, seed {args.toy_seed}, caption '{clip.caption}'"
  return {"video": clip.rgb, "depth": clip.disparity, "stride": 1}, description


def _jsonable(value: Any) -> Any:
  if isinstance(value, (np.generic, np.ndarray)):
    return value.tolist()
  raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _label(name: str, value: int | float) -> str:
  return f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"


def _grid(results: list[EditResult], labels: list[str], depth_label: str) -> np.ndarray:
  """uint8 (T, label bar + H, sum of widths, 3): [input |] depth | one column per result."""
  first = results[0]
  videos, names = [], []
  if first.source is not None:
    videos.append(first.source)
    names.append("input")
  videos.append(video_io.depth_to_rgb(first.depth))
  names.append(depth_label)
  return video_io.make_grid(videos + [r.frames for r in results], names + labels)


def _write_all(videos: dict[str, np.ndarray], fps: float, sidecar: str, text: str) -> None:
  """Writes every output under a temporary name; renames them only once all are complete.

  An exception removes every temporary file and renames none; a kill leaves only temporary files
  (dot-prefixed, `errors.atomic_path`) besides complete outputs. The sidecar is renamed last, so
  its presence means the whole set is there.
  """
  with contextlib.ExitStack() as stack:
    sidecar_tmp = stack.enter_context(atomic_path(sidecar))
    for path, frames in videos.items():
      video_io.write_video(stack.enter_context(atomic_path(path)), frames, fps)
    with open(sidecar_tmp, "w", encoding="utf-8") as f:
      f.write(text)


def run(args: argparse.Namespace, argv: list[str]) -> list[str]:
  """Checks, edits, writes; returns the written paths. Raises VidjaxError before writing anything."""
  sweep = parse_sweep(args.sweep) if args.sweep is not None else None
  paths = output_paths(args.out, sweep=sweep is not None)
  _check_outputs(paths, [p for p in (args.video, args.depth, args.mask, *(args.image or ())) if p is not None])
  _check_args(args)
  fps = _output_fps(args)

  pipe = VideoEditPipeline.from_pretrained(args.checkpoint, depth_estimator=args.depth_estimator,
                                           progress=not args.no_progress)
  call = {name: getattr(args, name) for name in _CALL_DEFAULTS if getattr(args, name, None) is not None}
  toy = None
  if args.video is None and args.depth is None:
    toy_call, toy = _toy_inputs(pipe, args)
    call.update(toy_call)
  values = sweep[1] if sweep else [None]
  calls = [call if sweep is None else {**call, sweep[0]: value} for value in values]
  cli_notes = []
  if sweep is not None and sweep[0] in call:
    cli_notes.append(f"--sweep {sweep[0]} replaces the value {call[sweep[0]]!r} given by its own flag")
  # Every sweep value is checked before the first edit (once: `edit` does not check again), so a bad
  # third value costs no sampling.
  checked = [pipe.check_settings(**c) for c in calls]

  results, notes = [], list(cli_notes)
  # The pipeline's notes come back in result.settings["warnings"]: printed once each, as one line.
  with warnings.catch_warnings(record=True) as caught:
    for settings in checked:
      results.append(pipe.edit(settings))
  for result in results:
    notes += [n for n in result.settings["warnings"] if n not in notes]
  notes += [str(w.message) for w in caught if str(w.message) not in notes]  # others than the pipeline's notes

  settings = []
  for result in results:
    s = {**result.settings, "fps": fps, "warnings": cli_notes + result.settings["warnings"]}
    if toy is not None:
      s.update(video=toy, depth="toy world ground-truth disparity", stride=args.stride or 1)
    settings.append(s)
  record = {"settings": settings[0] if sweep is None else settings, "outputs": paths,
            "timings": results[0].timings if sweep is None else [r.timings for r in results],
            "command": ["vidjax", "edit", *argv]}
  if sweep is None:
    videos = {paths["video"]: results[0].frames,
              paths["grid"]: _grid(results, ["output"], "depth")}
  else:
    name = sweep[0]
    record["sweep"] = {"name": name, "values": values}
    depth_label = _label("depth t_s", values[0]) if name == "structure_fidelity" else "depth"
    videos = {paths["grid"]: _grid(results, [_label(name, v) for v in values], depth_label)}
  text = json.dumps(record, indent=2, default=_jsonable) + "\n"  # before writing: a failure here writes nothing

  for note in notes:
    print(f"warning: {note}", file=sys.stderr)
  try:
    _write_all(videos, fps, paths["sidecar"], text)
  except OSError as e:  # a full disk, a read-only or special file system: atomic_path removed the temporaries
    raise InputError(e.filename or paths["sidecar"], f"could not be written ({e.strerror or e})",
                     "check the output folder's free space and permissions, or choose another --out") from e
  return [*videos, paths["sidecar"]]


def main(argv: list[str] | None = None) -> int:
  """Runs one edit (or sweep); returns the exit status (argparse exits with 2 on malformed flags)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  args = build_parser().parse_args(argv)
  try:
    written = run(args, argv)
  except VidjaxError as e:
    print(f"vidjax edit: error: {e}", file=sys.stderr)
    return EXIT_ERROR
  for path in written:
    print(f"wrote {path}")
  return EXIT_OK


if __name__ == "__main__":
  sys.exit(main())
