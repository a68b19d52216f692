"""Builds ArrayRecord shards of video clips with depth and captions: the library side of `vidjax build-shards`.

  spec = BuildSpec(ToySource(256, seed=0), ClipSpec(8, 2, 64, 64), "/data/toy", depth_method="toy")
  report = build_shards(spec, num_workers=2, log=print)   # report.exit_status: 0, 3 (partial) or 2

Two executors share every step here: `build_shards` (this module's process pool: the toy main job's
builder, `vidjax build-shards --runner local`) and the Apache Beam pipeline of
`data_pipelines/beam_shards.py` (`vidjax build-shards`). The steps: `plan_build` (list the items,
group them into shards, reuse the shards a killed run committed), `load_clips` (decode, cut, fit
one item), `finish_clips` (depth for a batch of clips, optional latents, one record per clip),
`commit_shard` (write under a temporary name, rename, marker) and `finish_build` (skipped.jsonl,
warnings.jsonl, manifest.json). Both executors therefore write the same bytes for the same inputs.
Sources and depth methods: `vidjax.data.sources`, `vidjax.data.depth_estimators`; the clip policy:
`vidjax.data.clips`; the record format: `vidjax.data.records`.

Output folder: `shard-SSSSS-of-NNNNN.array_record` files, `manifest.json` (written last, so a folder
with a manifest is complete), `skipped.jsonl` (one {"key", "source", "reason"} per skipped item),
`warnings.jsonl` (one {"key", "source", "warning"} per change worth knowing, e.g. an upscaled video)
and `done/<shard>.json` markers. A shard holds the clips of `examples_per_shard` consecutive items (one
clip each by default), in item order and, within an item, by start frame. A shard is written
under a temporary name and renamed, then its marker is written; a re-run reuses every shard whose
marker matches this build and rebuilds the rest, so a killed run resumes where it stopped and never
leaves a half-written shard under a final name. Shards whose items were all skipped are not listed.
The manifest's `fingerprint` covers the items (keys, references, captions), every setting and the
code version (`code_version`); a marker's covers the same for its shard.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import pathlib
from typing import Any, Callable, Iterable, Iterator

import av
import numpy as np

import vidjax
from vidjax.data import depth_estimators, records
from vidjax.data.sources import ClipSpec, FolderSource, Item, SourceClip, TfdsSource, ToySource
from vidjax.errors import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, InputError, atomic_path, write_json

DONE_DIR = "done"
WARNINGS_NAME = "warnings.jsonl"
# Per-item failures that skip the item instead of stopping the build: bad inputs, and decoder
# errors that surface while decoding a stream.
ITEM_ERRORS = (InputError, av.FFmpegError)
# Clips a depth model sees in one call (finish_clips): enough to fill a DPT batch, few enough to bound memory.
CLIPS_PER_DEPTH_BATCH = 16


@dataclasses.dataclass(frozen=True)
class BuildSpec:
  """Everything that determines the shards' contents.

  `encode_fn(frames uint8 (N, H, W, 3)) -> (N, h, w, 4)` caches VAE latents in the records and
  `embed_fn(frames uint8 (N, H, W, 3)) -> (N, D)` CLIP image embeddings (`clip_embeddings`, one per
  frame: Gen-1's content). Both act per frame and are called on a batch of clips' frames at once
  (N = the sum of their T), so a jitted model runs once per batch. With several workers they must be
  module-level functions (they are pickled to the workers).
  """

  source: ToySource | FolderSource | TfdsSource
  clip: ClipSpec
  output_dir: str
  depth_method: str
  depth_dir: str | None = None
  depth_weights: str | None = None
  examples_per_shard: int = 256
  encode_fn: Callable[[np.ndarray], np.ndarray] | None = None
  embed_fn: Callable[[np.ndarray], np.ndarray] | None = None
  # 'dpt' depth: weights path -> f(frames) -> inverse depth (module-level: pickled to the workers).
  load_depth_model: Callable[[str], Callable[[np.ndarray], np.ndarray]] | None = None


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


@functools.lru_cache(maxsize=1)
def code_version() -> str:
  """vidjax's version and a digest of the data package's source: what decides a record's bytes."""
  digest = hashlib.sha256()
  for path in sorted(pathlib.Path(__file__).parent.glob("*.py")):
    digest.update(path.name.encode() + b"\0" + path.read_bytes())
  return f"{vidjax.__version__}+{digest.hexdigest()[:12]}"


def _describe(fn: Callable | None) -> str | None:
  """A function's qualified name, or a callable object's repr (a dataclass's names its folder)."""
  return None if fn is None else getattr(fn, "__qualname__", None) or repr(fn)


def _fingerprint(spec: BuildSpec, name: str, items: list[Item]) -> str:
  settings = {
      "source": dataclasses.asdict(spec.source), "kind": spec.source.kind,
      "clip": dataclasses.asdict(spec.clip), "depth": spec.depth_method,
      "depth_dir": spec.depth_dir, "encode_fn": _describe(spec.encode_fn), "embed_fn": _describe(spec.embed_fn),
      "shard": name, "items": [[item.key, item.ref, item.caption] for item in items],
      "code": code_version(),
  }
  return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _done_path(spec: BuildSpec, name: str) -> str:
  return os.path.join(spec.output_dir, DONE_DIR, name + ".json")


def committed(spec: BuildSpec, name: str, fingerprint: str) -> ShardResult | None:
  """The finished shard `name` of this same build (read from its marker), or None if it must be (re)built."""
  try:
    with open(_done_path(spec, name)) as f:
      done = json.load(f)
  except (OSError, ValueError):
    return None
  if done.get("fingerprint") != fingerprint:
    raise InputError(spec.output_dir, f"{name} was built with other settings, items or code",
                     "use a new --output_dir, or delete this one to rebuild")
  if done["num_examples"] and not os.path.isfile(os.path.join(spec.output_dir, name)):
    return None
  return ShardResult(name, done["num_examples"], done["skipped"], done["fields"], reused=True,
                     warnings=done.get("warnings", []))


@dataclasses.dataclass(frozen=True)
class ShardTask:
  """One shard to write: its name, its items and the fingerprint its marker records."""

  index: int
  name: str
  fingerprint: str
  items: list[Item]


@dataclasses.dataclass(frozen=True)
class Plan:
  """The shards of a build, in order; `reused` maps the names of those a previous run committed to their results."""

  tasks: list[ShardTask]
  reused: dict[str, ShardResult]

  @property
  def names(self) -> list[str]:
    return [task.name for task in self.tasks]

  @property
  def pending(self) -> list[ShardTask]:
    return [task for task in self.tasks if task.name not in self.reused]


def plan_build(spec: BuildSpec, log: Callable[[str], None] = lambda message: None) -> Plan:
  """Lists the items, groups them into shards and finds the shards already committed (cheap: no decoding)."""
  spec.clip.check()
  items = spec.source.items()
  _remove_stale_temporaries(spec.output_dir)
  groups = plan_shards(items, spec.examples_per_shard)
  names = [records.shard_name(i, len(groups)) for i in range(len(groups))]
  _check_no_foreign_shards(spec, names)
  tasks = [ShardTask(i, name, _fingerprint(spec, name, group), group)
           for i, (name, group) in enumerate(zip(names, groups))]
  reused = {}
  for task in tasks:
    result = committed(spec, task.name, task.fingerprint)
    if result:
      reused[task.name] = result
      log(f"{task.name}: finished earlier, skipped")
  return Plan(tasks, reused)


@functools.lru_cache(maxsize=4)
def _estimator(method: str, depth_dir: str | None, depth_weights: str | None, load_model):
  """One estimator per process (a DPT model loads its weights once)."""
  return depth_estimators.make_depth_estimator(method, depth_dir=depth_dir, depth_weights=depth_weights,
                                               load_model=load_model)


def estimator(spec: BuildSpec) -> depth_estimators.DepthEstimator:
  """The spec's depth estimator, loaded once per process (a Beam worker's DoFn.setup calls it)."""
  return _estimator(spec.depth_method, spec.depth_dir, spec.depth_weights, spec.load_depth_model)


@functools.lru_cache(maxsize=4)
def schema(spec: BuildSpec) -> dict[str, records.FieldSpec]:
  """The records' fields; `start_frame` (int32) under a clip policy other than one clip from the start."""
  clip = spec.clip
  probe = np.zeros((clip.num_frames, clip.height, clip.width, 3), np.uint8)
  latent_shape = None if spec.encode_fn is None else np.shape(spec.encode_fn(probe))
  fields = records.clip_fields(clip.num_frames, clip.height, clip.width, latent_shape=latent_shape,
                               with_masks=getattr(spec.source, "with_masks", False),
                               with_start_frame=not clip.from_start)
  if spec.embed_fn is not None:
    fields[records.CLIP_EMBEDDINGS] = records.FieldSpec(np.shape(spec.embed_fn(probe)), "float16")
  return fields


def _per_clip(fn: Callable[[np.ndarray], np.ndarray], clips: list[SourceClip]) -> list[np.ndarray]:
  """A per-frame `fn` on all the clips' frames at once (sum of T, H, W, 3), its output split back per clip."""
  out = np.asarray(fn(np.concatenate([clip.frames for clip in clips])))
  return np.split(out, np.cumsum([len(clip.frames) for clip in clips])[:-1])


def skip_row(key: str, item: Item, error: Exception) -> dict[str, str]:
  """The skipped.jsonl row of an item (or one clip of it) that could not be written."""
  return {"key": key, "source": str(item.ref), "reason": str(error)}


def load_clips(spec: BuildSpec, item: Item) -> list[SourceClip]:
  """Step 1: decode, cut and fit one item's clips; raises one of ITEM_ERRORS for a bad item."""
  return spec.source.load(item, spec.clip)


def finish_clips(spec: BuildSpec, pairs: list[tuple[Item, SourceClip]]) -> list[bytes | dict[str, str]]:
  """Step 2, on a batch of (item, clip) pairs: depth, latents, CLIP embeddings (one call each), a record each.

  Returns, in the pairs' order, each clip's record, or its skipped.jsonl row when it has no depth.
  """
  fields = schema(spec)
  depths = depth_estimators.estimate_batch(estimator(spec), [clip for _, clip in pairs])
  kept = [clip for (_, clip), depth in zip(pairs, depths) if not isinstance(depth, Exception)]
  cached = {name: iter(_per_clip(fn, kept)) for name, fn in (("latents", spec.encode_fn),
                                                            (records.CLIP_EMBEDDINGS, spec.embed_fn))
            if fn is not None and kept}
  out = []
  for (item, clip), depth in zip(pairs, depths):
    if isinstance(depth, Exception):
      out.append(skip_row(clip.key, item, depth))
      continue
    example = {"frames": clip.frames, "depth": depth, "caption": clip.caption, "key": clip.key}
    example.update({name: next(values) for name, values in cached.items()})
    if "masks" in fields:
      example["masks"] = clip.masks
    if "start_frame" in fields:
      example["start_frame"] = clip.start_frame
    out.append(records.encode_example(example, fields))
  return out


def warning_rows(item: Item, clip: SourceClip) -> list[dict[str, str]]:
  return [{"key": clip.key, "source": str(item.ref), "warning": w} for w in clip.warnings]


def commit_shard(spec: BuildSpec, name: str, fingerprint: str, encoded: Iterable[bytes],
                 skipped: list[tuple[tuple[int, int], dict[str, str]]], warnings: list[dict[str, str]]) -> ShardResult:
  """Step 3: writes shard `name` under a temporary name, renames it, then writes its marker.

  `encoded` may be a generator that fills `skipped` ((position, start frame), row) and `warnings` as it
  runs; the marker lists the skipped rows by position. Committing the same shard twice (a retried
  Beam bundle) writes the same bytes again: the commit is idempotent.
  """
  path = os.path.join(spec.output_dir, name)
  num_examples = records.write_shard(path, encoded)
  if num_examples == 0:
    os.remove(path)
  rows = [row for _, row in sorted(skipped, key=lambda s: s[0])]
  result = ShardResult(name, num_examples, rows, {k: v.to_json() for k, v in schema(spec).items()},
                       warnings=warnings)
  done = dataclasses.asdict(result) | {"fingerprint": fingerprint}
  done.pop("reused")
  write_json(_done_path(spec, name), done)
  return result


def _loaded(spec: BuildSpec, items: list[Item], skipped: list) -> Iterator[list[tuple[int, Item, SourceClip]]]:
  """Step 1 over a shard's items: batches of (position, item, clip), at most CLIPS_PER_DEPTH_BATCH clips
  each, in item order; a bad item's row goes to `skipped`."""
  batch = []
  for position, item in enumerate(items):
    try:
      clips = load_clips(spec, item)
    except ITEM_ERRORS as e:
      skipped.append(((position, -1), skip_row(item.key, item, e)))
      continue
    batch += [(position, item, clip) for clip in clips]
    if len(batch) >= CLIPS_PER_DEPTH_BATCH:
      yield batch
      batch = []
  if batch:
    yield batch


def build_shard(spec: BuildSpec, task: ShardTask) -> ShardResult:
  """Writes one shard (skipping bad items and clips) and then its done marker; returns what it holds.

  Its clips stream through: load an item, depth and encode a batch, write; a shard never sits in memory.
  """
  skipped, warned = [], []

  def encoded():
    for batch in _loaded(spec, task.items, skipped):
      finished = finish_clips(spec, [(item, clip) for _, item, clip in batch])
      for (position, item, clip), record in zip(batch, finished):
        if isinstance(record, dict):
          skipped.append(((position, clip.start_frame), record))
          continue
        warned.extend(warning_rows(item, clip))
        yield record

  return commit_shard(spec, task.name, task.fingerprint, encoded(), skipped, warned)


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
  plan = plan_build(spec, log)
  results = dict(plan.reused)
  for result in _run(spec, plan, num_workers):
    results[result.name] = result
    log(f"{result.name}: {result.num_examples} examples, {len(result.skipped)} skipped")
  return finish_build(spec, plan, results)


def finish_build(spec: BuildSpec, plan: Plan, results: dict[str, ShardResult]) -> BuildReport:
  """Step 4, once every shard is committed: skipped.jsonl, warnings.jsonl and, last, manifest.json."""
  report = BuildReport([results[n] for n in plan.names], None)
  _write_skipped(spec, report.skipped)
  _write_jsonl(os.path.join(spec.output_dir, WARNINGS_NAME), report.warnings)
  if report.num_examples == 0:
    return report
  return dataclasses.replace(report, manifest_path=_write_manifest(spec, plan, report.shards))


def _run(spec: BuildSpec, plan: Plan, num_workers: int):
  pending = plan.pending
  if num_workers <= 1 or len(pending) <= 1:
    for task in pending:
      yield build_shard(spec, task)
    return
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
    futures = [pool.submit(build_shard, spec, task) for task in pending]
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


def _write_manifest(spec: BuildSpec, plan: Plan, shards: list[ShardResult]) -> str:
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
      created_by=f"vidjax {vidjax.__version__} vidjax.data.shards",
      fingerprint=hashlib.sha256(json.dumps([t.fingerprint for t in plan.tasks]).encode()).hexdigest())
  return records.write_manifest(spec.output_dir, manifest)
