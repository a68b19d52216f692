"""Builds ArrayRecord shards of video clips with depth and captions for vidjax training.

  python -m data_pipelines.build_shards --source toy --num_examples 256 --output_dir /data/toy
  python -m data_pipelines.build_shards --source folder --captions /data/webvid/results.csv \
      --depth folder --depth_dir /data/webvid/depth --output_dir /data/webvid_shards
  python -m data_pipelines.build_shards --source tfds --tfds_name ucf101 --split train \
      --depth dpt --depth_weights /weights/dpt_large --output_dir /data/ucf101_shards

(`vidjax build-shards` runs the same `main`.) Clips are T frames (--num_frames, default 8) taken
--stride frames apart (default 4: Gen-1 uses 8 at stride 4, Make-Your-Video 16 at stride 4),
resized and centre-cropped to --height x --width. Sources, clip policy and depth methods are
described in `data_pipelines.sources` and `data_pipelines.depth_estimators`; the record format in
`vidjax.data.records`.

Output folder: `shard-SSSSS-of-NNNNN.array_record` files, `manifest.json` (written last, so a folder
with a manifest is complete), `skipped.jsonl` (one {"key", "source", "reason"} per skipped item),
`warnings.jsonl` (one {"key", "source", "warning"} per change worth knowing, e.g. a video smaller
than the clip upscaled; sources under --min_source_side are skipped instead) and `done/<shard>.json`
markers. Each shard is one task of --num_workers processes. A shard is written under a temporary
name and renamed, then its marker is written; a re-run reuses every shard whose marker matches this
build and rebuilds the rest, so a killed run resumes where it stopped and never leaves a
half-written shard under a final name. Shards whose items were all skipped are not listed.

Exit status: 0 every item was written (warnings, printed and in warnings.jsonl, included); 3
(EXIT_PARTIAL) some items were skipped (unreadable, too short, too small, no depth; printed and
listed in skipped.jsonl) and the others written; 2 (EXIT_ERROR) wrong arguments, or nothing could be
written.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import sys
from typing import Any, Callable

import av
import numpy as np

import vidjax
from data_pipelines import depth_estimators
from data_pipelines.sources import ClipSpec, FolderSource, Item, TfdsSource, ToySource
from vidjax.data import records
from vidjax.errors import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, InputError, VidjaxError, atomic_path

DONE_DIR = "done"
WARNINGS_NAME = "warnings.jsonl"
# Per-item failures that skip the item instead of stopping the build: bad inputs, and decoder
# errors that surface while decoding a stream.
_ITEM_ERRORS = (InputError, av.FFmpegError)


@dataclasses.dataclass(frozen=True)
class BuildSpec:
  """Everything that determines the shards' contents.

  `encode_fn(frames uint8 (T, H, W, 3)) -> (T, h, w, 4)` caches VAE latents in the records; with
  --num_workers > 1 it must be a module-level function (it is pickled to the workers).
  """

  source: ToySource | FolderSource | TfdsSource
  clip: ClipSpec
  output_dir: str
  depth_method: str
  depth_dir: str | None = None
  depth_weights: str | None = None
  examples_per_shard: int = 256
  encode_fn: Callable[[np.ndarray], np.ndarray] | None = None


@dataclasses.dataclass(frozen=True)
class ShardResult:
  name: str
  num_examples: int
  skipped: list[dict[str, str]]
  fields: dict[str, Any]  # records.FieldSpec.to_json() per field
  reused: bool = False
  warnings: list[dict[str, str]] = dataclasses.field(default_factory=list)  # {"key", "source", "warning"}


@dataclasses.dataclass(frozen=True)
class BuildReport:
  shards: list[ShardResult]
  manifest_path: str | None

  @property
  def num_examples(self) -> int:
    return sum(s.num_examples for s in self.shards)

  @property
  def skipped(self) -> list[dict[str, str]]:
    return [item for s in self.shards for item in s.skipped]

  @property
  def warnings(self) -> list[dict[str, str]]:
    return [item for s in self.shards for item in s.warnings]

  @property
  def exit_status(self) -> int:
    if self.num_examples == 0:
      return EXIT_ERROR
    return EXIT_PARTIAL if self.skipped else EXIT_OK


def plan_shards(items: list[Item], examples_per_shard: int) -> list[list[Item]]:
  """Consecutive groups of `examples_per_shard` items (the last may be smaller)."""
  return [items[i:i + examples_per_shard] for i in range(0, len(items), examples_per_shard)]


def _fingerprint(spec: BuildSpec, name: str, items: list[Item]) -> str:
  settings = {
      "source": dataclasses.asdict(spec.source), "kind": spec.source.kind,
      "clip": dataclasses.asdict(spec.clip), "depth": spec.depth_method,
      "depth_dir": spec.depth_dir, "encode_fn": getattr(spec.encode_fn, "__qualname__", None),
      "shard": name, "keys": [item.key for item in items],
  }
  return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _done_path(spec: BuildSpec, name: str) -> str:
  return os.path.join(spec.output_dir, DONE_DIR, name + ".json")


def _reusable(spec: BuildSpec, name: str, fingerprint: str) -> ShardResult | None:
  """The finished shard `name` of this same build, or None if it must be (re)built."""
  try:
    with open(_done_path(spec, name)) as f:
      done = json.load(f)
  except (OSError, ValueError):
    return None
  if done.get("fingerprint") != fingerprint:
    raise InputError(spec.output_dir, f"{name} was built with other settings or items",
                     "use a new --output_dir, or delete this one to rebuild")
  if done["num_examples"] and not os.path.isfile(os.path.join(spec.output_dir, name)):
    return None
  return ShardResult(name, done["num_examples"], done["skipped"], done["fields"], reused=True,
                     warnings=done.get("warnings", []))


@functools.lru_cache(maxsize=4)
def _estimator(method: str, depth_dir: str | None, depth_weights: str | None):
  """One estimator per process (a DPT model loads its weights once)."""
  return depth_estimators.make_depth_estimator(method, depth_dir=depth_dir,
                                               depth_weights=depth_weights)


def _schema(spec: BuildSpec) -> dict[str, records.FieldSpec]:
  clip = spec.clip
  latent_shape = None
  if spec.encode_fn is not None:
    probe = np.zeros((clip.num_frames, clip.height, clip.width, 3), np.uint8)
    latent_shape = np.shape(spec.encode_fn(probe))
  return records.clip_fields(clip.num_frames, clip.height, clip.width, latent_shape=latent_shape,
                             with_masks=getattr(spec.source, "with_masks", False))


def _example(spec: BuildSpec, item: Item, fields) -> tuple[dict[str, Any], tuple[str, ...]]:
  """-> (the record's fields, the clip's warnings)."""
  clip = spec.source.load(item, spec.clip)
  estimator = _estimator(spec.depth_method, spec.depth_dir, spec.depth_weights)
  example = {"frames": clip.frames, "depth": estimator(clip), "caption": clip.caption,
             "key": clip.key}
  if "latents" in fields:
    example["latents"] = spec.encode_fn(clip.frames)
  if "masks" in fields:
    example["masks"] = clip.masks
  return example, clip.warnings


def build_shard(spec: BuildSpec, index: int, count: int, items: list[Item]) -> ShardResult:
  """Writes one shard (skipping bad items) and then its done marker; returns what it holds."""
  name = records.shard_name(index, count)
  fields = _schema(spec)
  skipped, warned = [], []

  def encoded():
    for item in items:
      try:
        example, warnings = _example(spec, item, fields)
        record = records.encode_example(example, fields)
      except _ITEM_ERRORS as e:
        skipped.append({"key": item.key, "source": str(item.ref), "reason": str(e)})
        continue
      warned.extend({"key": item.key, "source": str(item.ref), "warning": w} for w in warnings)
      yield record

  path = os.path.join(spec.output_dir, name)
  num_examples = records.write_shard(path, encoded())
  if num_examples == 0:
    os.remove(path)
  result = ShardResult(name, num_examples, skipped, {k: v.to_json() for k, v in fields.items()},
                       warnings=warned)
  done = dataclasses.asdict(result) | {"fingerprint": _fingerprint(spec, name, items)}
  done.pop("reused")
  with atomic_path(_done_path(spec, name)) as tmp, open(tmp, "w") as f:
    json.dump(done, f)
  return result


def _check_no_foreign_shards(spec: BuildSpec, names: list[str]) -> None:
  done_dir = os.path.join(spec.output_dir, DONE_DIR)
  foreign = sorted(set(os.listdir(done_dir) if os.path.isdir(done_dir) else ())
                   - {n + ".json" for n in names})
  if foreign:
    raise InputError(spec.output_dir, f"holds shards of another build ({foreign[0]}, ...)",
                     "use a new --output_dir, or delete this one to rebuild")


def _remove_stale_temporaries(output_dir: str) -> None:
  """Deletes the temporary files of a killed earlier run (one build per folder at a time)."""
  for folder in (output_dir, os.path.join(output_dir, DONE_DIR)):
    names = os.listdir(folder) if os.path.isdir(folder) else ()
    for name in names:
      if name.startswith(".shard-") and ".tmp-" in name:
        os.remove(os.path.join(folder, name))


def build_shards(spec: BuildSpec, num_workers: int = 1,
                 log: Callable[[str], None] = lambda message: None) -> BuildReport:
  """Builds (or resumes) every shard, then writes skipped.jsonl and, last, manifest.json."""
  items = spec.source.items()
  _remove_stale_temporaries(spec.output_dir)
  plan = plan_shards(items, spec.examples_per_shard)
  names = [records.shard_name(i, len(plan)) for i in range(len(plan))]
  _check_no_foreign_shards(spec, names)
  results, pending = {}, []
  for index, (name, shard_items) in enumerate(zip(names, plan)):
    reused = _reusable(spec, name, _fingerprint(spec, name, shard_items))
    if reused:
      results[name] = reused
      log(f"{name}: finished earlier, skipped")
    else:
      pending.append((index, shard_items))
  for result in _run(spec, pending, len(plan), num_workers):
    results[result.name] = result
    log(f"{result.name}: {result.num_examples} examples, {len(result.skipped)} skipped")
  report = BuildReport([results[n] for n in names], None)
  _write_skipped(spec, report.skipped)
  _write_jsonl(os.path.join(spec.output_dir, WARNINGS_NAME), report.warnings)
  if report.num_examples == 0:
    return report
  return dataclasses.replace(report, manifest_path=_write_manifest(spec, report.shards))


def _run(spec: BuildSpec, pending: list[tuple[int, list[Item]]], count: int, num_workers: int):
  if num_workers <= 1 or len(pending) <= 1:
    for index, items in pending:
      yield build_shard(spec, index, count, items)
    return
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
    futures = [pool.submit(build_shard, spec, index, count, items) for index, items in pending]
    try:
      for future in concurrent.futures.as_completed(futures):
        yield future.result()
    finally:  # after a failure, do not wait for the shards not yet started
      pool.shutdown(cancel_futures=True)


def _write_skipped(spec: BuildSpec, skipped: list[dict[str, str]]) -> None:
  _write_jsonl(os.path.join(spec.output_dir, records.SKIPPED_NAME), skipped)


def _write_jsonl(path: str, rows: list[dict[str, str]]) -> None:
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in rows)


def _write_manifest(spec: BuildSpec, shards: list[ShardResult]) -> str:
  written = [s for s in shards if s.num_examples]
  if any(s.fields != written[0].fields for s in written):
    raise InputError(spec.output_dir, "shards disagree on their fields",
                     "delete the folder and rebuild it")
  clip = spec.clip
  manifest = records.Manifest(
      fields={k: records.FieldSpec(tuple(v["shape"]), v["dtype"])
              for k, v in written[0].fields.items()},
      shards=tuple(records.ShardInfo(s.name, s.num_examples) for s in written),
      source=spec.source.description, depth_method=spec.depth_method,
      num_frames=clip.num_frames, stride=clip.stride, height=clip.height, width=clip.width,
      created_by=f"vidjax {vidjax.__version__} data_pipelines/build_shards.py")
  return records.write_manifest(spec.output_dir, manifest)


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
  add("--seed", type=int, default=0, help="toy: scene seeds derive from it")
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
  add("--depth", choices=depth_estimators.DEPTH_METHODS,
      help="default: toy for --source toy; required otherwise")
  add("--depth_dir", help="depth folder: <depth_dir>/<key>.npy")
  add("--depth_weights", help="depth dpt: local weights")
  add("--examples_per_shard", type=_positive, default=256)
  add("--num_workers", type=_positive, default=1)
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
  clip = ClipSpec(args.num_frames, args.stride, args.height, args.width, args.min_source_side)
  return BuildSpec(source, clip, args.output_dir, depth, args.depth_dir, args.depth_weights,
                   args.examples_per_shard)


def main(argv: list[str] | None = None) -> int:
  """Runs the builder with command-line flags; returns the exit status (see module docstring)."""
  try:
    args = _parser().parse_args(argv)
  except SystemExit as e:  # argparse has printed the usage
    return EXIT_OK if e.code == 0 else EXIT_ERROR
  try:
    report = build_shards(spec_from_args(args), args.num_workers, log=print)
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
