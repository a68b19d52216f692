"""Builds ArrayRecord shards of video clips with depth and captions for vidjax training.

  python -m data_pipelines.build_shards --source toy --num_examples 256 --output_dir /data/toy --num_workers 2
  python -m data_pipelines.build_shards --source folder --captions /data/webvid/results.csv \
      --depth folder --depth_dir /data/webvid/depth --output_dir /data/webvid_shards
  python -m data_pipelines.build_shards --source tfds --tfds_name ucf101 --split train \
      --depth dpt --depth_weights /weights/dpt_large --output_dir /data/ucf101_shards

(`vidjax build-shards` runs the same `main`.) The build is an Apache Beam pipeline
(`data_pipelines.beam_shards`, `pip install -e ".[beam]"`): --runner DirectRunner (the default) runs it
here on --num_workers processes; any other runner (DataflowRunner, FlinkRunner, SparkRunner) takes
Beam's usual pipeline options, which pass through (every flag this parser does not know). --runner
local runs the same steps in this package's own process pool (`vidjax.data.shards.build_shards`, the
toy main job's builder, no Beam needed); both write the same bytes.

Clips are T frames (--num_frames, default 8) taken --stride frames apart (default 4: Gen-1 uses 8 at
stride 4, Make-Your-Video 16 at stride 4), resized and centre-cropped to --height x --width; by
default one clip a video from its start, or several (--clips_per_video, --clip_stride,
--clip_offsets, --seed, --min_video_frames, --scene_cut_threshold: `vidjax.data.clips`). Sources and
depth methods are described in `vidjax.data.sources` and `vidjax.data.depth_estimators`; the record
format in `vidjax.data.records`.

Output folder: `shard-SSSSS-of-NNNNN.array_record` files, `manifest.json` (written last, so a folder
with a manifest is complete), `skipped.jsonl` (one {"key", "source", "reason"} per skipped item),
`warnings.jsonl` (one {"key", "source", "warning"} per change worth knowing, e.g. a video smaller
than the clip upscaled; sources under --min_source_side are skipped instead) and `done/<shard>.json`
markers. A shard holds the clips of --examples_per_shard consecutive items. A shard is written under a temporary
name and renamed, then its marker is written; a re-run reuses every shard whose marker matches this
build and rebuilds the rest, so a killed run resumes where it stopped and never leaves a
half-written shard under a final name. Shards whose items were all skipped are not listed.

Exit status: 0 every item was written (warnings, printed and in warnings.jsonl, included); 3
(EXIT_PARTIAL) some items were skipped (unreadable, too short, too small, no depth; printed and
listed in skipped.jsonl) and the others written; 2 (EXIT_ERROR) wrong arguments, or nothing could be
written (a Beam runner's own failure, e.g. a cluster refusing the job, surfaces as its traceback).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from vidjax.data import depth_estimators, records
from vidjax.data.shards import WARNINGS_NAME, BuildReport, BuildSpec, build_shards  # noqa: F401 (also the API of this job)
from vidjax.data.sources import ClipSpec, FolderSource, TfdsSource, ToySource
from vidjax.errors import EXIT_ERROR, EXIT_OK, InputError, VidjaxError


def load_dpt(weights: str):
  """The 'dpt' depth method's model (module level: pickled to the workers; jax loads only when used)."""
  from vidjax.convert.hf_dpt import load_depth_estimator  # pylint: disable=g-import-not-at-top

  return load_depth_estimator(weights).inverse_depth  # raw: the builder normalises each clip


def _positive(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
  return value


def _non_negative(text: str) -> int:
  value = int(text)
  if value < 0:
    raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
  return value


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="vidjax build-shards", description=__doc__.split("\n", 1)[0],
      epilog="Exit status: 0 all written, 3 some items skipped, 2 bad arguments or nothing "
      "written.")
  add = parser.add_argument
  add("--source", choices=("toy", "folder", "tfds"), required=True)
  add("--output_dir", required=True)
  add("--num_examples", type=_positive, help="toy: how many (default 64); others: at most")
  add("--seed", type=int, default=0, help="toy: scene seeds derive from it; --clip_offsets random too")
  add("--with_masks", action="store_true", help="toy: store object masks")
  add("--captions", help="folder: CSV or JSONL with 'path' and 'caption'")
  add("--tfds_name")
  add("--split", default="train")
  add("--tfds_data_dir")
  add("--tfds_video_key", default="video")
  add("--tfds_label_key", default="label")
  add("--num_frames", type=_positive, default=8)
  add("--stride", type=_positive, default=4)
  add("--height", type=_positive, default=256)
  add("--width", type=_positive, default=256)
  add("--min_source_side", type=_non_negative, default=16,
      help="skip sources whose centre crop has a side under this many pixels (upscaling more is guesswork; "
      "smaller upscales are warned about); 0 takes any size (default 16, what vidjax edit refuses)")
  add("--clips_per_video", type=_non_negative, default=1, help="at most this many clips a video; 0 = all that fit")
  add("--clip_stride", type=_non_negative, default=0,
      help="frames between clip starts (0 = one clip's span: back to back)")
  add("--clip_offsets", choices=("fixed", "random"), default="fixed",
      help="fixed: clips from frame 0 on; random: a phase and a choice of clips drawn from --seed and the key")
  add("--min_video_frames", type=_non_negative, default=0, help="skip shorter videos (0 = one clip's span)")
  add("--scene_cut_threshold", type=float, default=0.0,
      help="0 = off; else clips never cross a frame change above this mean absolute difference (0-255; try 30)")
  add("--depth", choices=depth_estimators.DEPTH_METHODS,
      help="default: toy for --source toy; required otherwise")
  add("--depth_dir", help="depth folder: <depth_dir>/<key>.npy")
  add("--depth_weights", help="depth dpt: local weights")
  add("--vae_dir", help="cache VAE latents: a `vidjax convert vae` folder (data.use_latents trains on them)")
  add("--clip_dir", help="cache CLIP image embeddings per frame: a `vidjax convert clip` folder with a projection")
  add("--examples_per_shard", type=_positive, default=256)
  add("--num_workers", type=_positive, default=1, help="DirectRunner or local: worker processes")
  add("--runner", default="DirectRunner",
      help="a Beam runner (DirectRunner, DataflowRunner, FlinkRunner, SparkRunner, ...; unknown flags are its "
      "pipeline options), or 'local': this package's process pool, without Beam")
  return parser


def spec_from_args(args: argparse.Namespace) -> BuildSpec:
  """Turns parsed flags into a BuildSpec; InputError for a flag that misses its partner."""
  if args.source == "toy":
    source = ToySource(args.num_examples or 64, args.seed, args.with_masks)
  elif args.source == "folder":
    if not args.captions:
      raise InputError("--captions", "--source folder needs a captions file",
                       "pass --captions videos.csv")
    source = FolderSource(args.captions, args.num_examples)
  else:
    if not args.tfds_name:
      raise InputError("--tfds_name", "--source tfds needs a dataset name", "e.g. ucf101")
    source = TfdsSource(args.tfds_name, args.split, args.tfds_data_dir, args.num_examples,
                        args.tfds_video_key, args.tfds_label_key)
  depth = args.depth or ("toy" if args.source == "toy" else None)
  if depth is None or (depth == "toy" and args.source != "toy"):
    raise InputError(f"--depth {depth}", f"not a depth method for --source {args.source}",
                     "pass --depth folder or --depth dpt (toy ground truth needs --source toy)")
  depth_estimators.check_depth_method(depth, depth_dir=args.depth_dir,
                                      depth_weights=args.depth_weights)
  clip = ClipSpec(args.num_frames, args.stride, args.height, args.width, args.min_source_side,
                  clips_per_video=args.clips_per_video, clip_stride=args.clip_stride,
                  clip_offsets=args.clip_offsets, seed=args.seed, min_video_frames=args.min_video_frames,
                  scene_cut_threshold=args.scene_cut_threshold).check()
  return BuildSpec(source, clip, args.output_dir, depth, args.depth_dir, args.depth_weights,
                   args.examples_per_shard, load_depth_model=load_dpt, **_encoders(args))


def _encoders(args: argparse.Namespace) -> dict[str, object]:
  """encode_fn / embed_fn for --vae_dir / --clip_dir; InputError for a folder without the component."""
  out = {}
  for flag, folder, field, component, kind in (("--vae_dir", args.vae_dir, "encode_fn", "vae", "vae"),
                                               ("--clip_dir", args.clip_dir, "embed_fn", "image_encoder", "clip")):
    if folder is None:
      continue
    # jax and the models load only when asked for: the plain build needs neither.
    from data_pipelines import encoders  # pylint: disable=g-import-not-at-top
    from vidjax.convert import pretrained  # pylint: disable=g-import-not-at-top
    if component not in pretrained.read_manifest(folder)["components"]:
      raise InputError(f"{flag} {folder}", f"holds no '{component}' component", f"write one with `vidjax convert {kind}`")
    out[field] = encoders.VaeLatents(folder) if field == "encode_fn" else encoders.ClipEmbeddings(folder)
  return out


def executor(args: argparse.Namespace, pipeline_args: list[str]) -> Callable[..., BuildReport]:
  """`f(spec, log) -> BuildReport` for --runner; InputError for options the runner cannot take."""
  if args.runner == "local":
    if pipeline_args:
      raise InputError(" ".join(pipeline_args), "unknown flags (--runner local takes no Beam options)",
                       "see `vidjax build-shards --help`")
    return lambda spec, log: build_shards(spec, args.num_workers, log=log)
  try:
    # Only a Beam run needs Beam: --runner local and the toy main job run without it.
    from data_pipelines import beam_shards  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise InputError(f"--runner {args.runner}", f"needs Apache Beam ({e})",
                     'pip install -e ".[beam]", or pass --runner local') from e
  beam_args = ["--runner", args.runner, *pipeline_args]
  if args.runner in ("DirectRunner", "direct") and args.num_workers > 1:
    beam_args += ["--direct_num_workers", str(args.num_workers), "--direct_running_mode", "multi_processing"]
  return lambda spec, log: beam_shards.build(spec, beam_args, log=log)


def main(argv: list[str] | None = None) -> int:
  """Runs the builder with command-line flags; returns the exit status (see module docstring)."""
  try:
    args, pipeline_args = _parser().parse_known_args(argv)
  except SystemExit as e:  # argparse has printed the usage
    return EXIT_OK if e.code == 0 else EXIT_ERROR
  try:
    spec = spec_from_args(args)
    report = executor(args, pipeline_args)(spec, log=print)
  except VidjaxError as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_ERROR
  for item in report.warnings:
    print(f"warning: {item['source']}: {item['warning']}", file=sys.stderr)
  for item in report.skipped:
    print(f"skipped {item['source']}: {item['reason']}", file=sys.stderr)
  if report.num_examples == 0:
    print(f"error: no item could be written, see {records.SKIPPED_NAME}", file=sys.stderr)
  print(f"{report.num_examples} examples in {sum(1 for s in report.shards if s.num_examples)} "
        f"shards, {len(report.skipped)} items skipped; manifest: {report.manifest_path}")
  return report.exit_status


if __name__ == "__main__":
  sys.exit(main())
