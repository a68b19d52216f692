"""`vidjax build-shards` as an Apache Beam pipeline: the DirectRunner here, Dataflow/Flink/Spark on clusters.

  report = build(spec, ["--runner", "DirectRunner", "--direct_num_workers", "2",
                        "--direct_running_mode", "multi_processing"], log=print)

The same steps as the local builder (`vidjax.data.shards`), as a pipeline:

  Create(pending items, each with its shard and position)   the plan: cheap, nothing decoded
    -> Reshuffle                                            spread the items over the workers
    -> ParDo(LoadClips)        decode, cut, fit; a bad item goes to the `skipped` side output
    -> BatchElements -> ParDo(FinishClips)   depth for a batch of clips in one model call (the
                               model is loaded once per worker in DoFn.setup and runs on the
                               worker's accelerator when JAX finds one), latents, records
    -> CoGroupByKey(records, skipped) by shard -> ParDo(WriteShard)   sort by (position, start
                               frame), write under a temporary name, rename, marker
  then, in the launching process once the pipeline is done: skipped.jsonl, warnings.jsonl and,
  last, manifest.json from the shards' markers (`shards.finish_build`).

Exactly once: a shard's bytes depend only on its items and the settings (the sort undoes the
bundles' order, the workers' count and any retry), a commit is a rename of a complete file, and a
retried bundle commits the same bytes again. A run that dies and is started again reuses every
shard whose marker matches (`shards.plan_build`) and runs the pipeline over the others only.
The output folder must be a file system every worker and the launcher see (local disk for the
DirectRunner; a shared mount such as NFS, Filestore or a GCS FUSE mount on a cluster).
"""

from __future__ import annotations

import os
from typing import Callable

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from vidjax.data import shards
from vidjax.errors import InputError

SKIPPED = "skipped"
# Clips per FinishClips call: a DPT sees up to this many clips' frames at once (in its own batches).
MAX_CLIPS_PER_BATCH = 16
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LoadClips(beam.DoFn):
  """(shard index, position, item) -> (shard index, position, item, clip) per clip; a bad item -> SKIPPED."""

  def __init__(self, spec: shards.BuildSpec):
    self.spec = spec

  def process(self, element):
    index, position, item = element
    try:
      clips = shards.load_clips(self.spec, item)
    except shards.ITEM_ERRORS as e:
      yield beam.pvalue.TaggedOutput(SKIPPED, (index, (position, -1, shards.skip_row(item.key, item, e))))
      return
    for clip in clips:
      yield index, position, item, clip


class FinishClips(beam.DoFn):
  """A batch of LoadClips' outputs -> (shard index, (position, start frame, record, warnings)); no depth -> SKIPPED."""

  def __init__(self, spec: shards.BuildSpec):
    self.spec = spec

  def setup(self):
    shards.estimator(self.spec)  # once per worker: a DPT loads its weights here

  def process(self, batch):
    finished = shards.finish_clips(self.spec, [(item, clip) for _, _, item, clip in batch])
    for (index, position, item, clip), record in zip(batch, finished):
      if isinstance(record, dict):
        yield beam.pvalue.TaggedOutput(SKIPPED, (index, (position, clip.start_frame, record)))
      else:
        yield index, (position, clip.start_frame, record, shards.warning_rows(item, clip))


class WriteShard(beam.DoFn):
  """(shard index, {"records": [...], "skipped": [...]}) -> the committed shard's name."""

  def __init__(self, spec: shards.BuildSpec, tasks: dict[int, tuple[str, str]]):
    self.spec, self.tasks = spec, tasks  # index -> (name, fingerprint)

  def process(self, element):
    index, grouped = element
    name, fingerprint = self.tasks[index]
    ordered = sorted(grouped["records"], key=lambda r: r[:2])
    skipped = [row for *_, row in sorted(grouped[SKIPPED], key=lambda s: s[:2])]
    warnings = [w for *_, rows in ordered for w in rows]
    shards.commit_shard(self.spec, name, fingerprint, (r[2] for r in ordered), skipped, warnings)
    yield name


def pipeline_options(pipeline_args: list[str]) -> PipelineOptions:
  """Beam's options; on the DirectRunner's worker processes, this checkout importable and quieter logs."""
  if not any(a.startswith("--default_sdk_harness_log_level") for a in pipeline_args):
    pipeline_args = [*pipeline_args, "--default_sdk_harness_log_level=WARNING"]
  # DirectRunner workers are subprocesses: they must import data_pipelines (the DoFns' module).
  paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
  if _ROOT not in paths:
    os.environ["PYTHONPATH"] = os.pathsep.join([_ROOT] + [p for p in paths if p])
  try:
    return PipelineOptions(pipeline_args)
  except (ValueError, SystemExit) as e:
    raise InputError(" ".join(pipeline_args), f"not Beam pipeline options ({e})",
                     "see `python -m apache_beam.examples.wordcount --help` for Beam's flags") from e


def run_pipeline(spec: shards.BuildSpec, plan: shards.Plan, options: PipelineOptions) -> None:
  """Writes and commits every pending shard of `plan` (blocks until the pipeline is done)."""
  elements = [(task.index, position, item) for task in plan.pending for position, item in enumerate(task.items)]
  tasks = {task.index: (task.name, task.fingerprint) for task in plan.pending}
  with beam.Pipeline(options=options) as pipeline:
    loaded = (pipeline | "Items" >> beam.Create(elements, reshuffle=False) | "Spread" >> beam.Reshuffle()
              | "Load" >> beam.ParDo(LoadClips(spec)).with_outputs(SKIPPED, main="clips"))
    finished = (loaded.clips | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=MAX_CLIPS_PER_BATCH)
                | "Finish" >> beam.ParDo(FinishClips(spec)).with_outputs(SKIPPED, main="records"))
    skipped = (loaded[SKIPPED], finished[SKIPPED]) | "Skipped" >> beam.Flatten()
    _ = ({"records": finished.records, SKIPPED: skipped} | "ByShard" >> beam.CoGroupByKey()
         | "Write" >> beam.ParDo(WriteShard(spec, tasks)))


def build(spec: shards.BuildSpec, pipeline_args: list[str],
          log: Callable[[str], None] = lambda message: None) -> shards.BuildReport:
  """Builds (or resumes) the shards with Beam, then writes skipped.jsonl, warnings.jsonl and manifest.json."""
  plan = shards.plan_build(spec, log)
  if plan.pending:
    shards.schema(spec)  # a broken encode_fn fails here, once, not in every worker
    run_pipeline(spec, plan, pipeline_options(pipeline_args))
  results = dict(plan.reused)
  for task in plan.pending:
    result = shards.committed(spec, task.name, task.fingerprint)
    if result is None:
      raise InputError(spec.output_dir, f"the pipeline finished without committing {task.name}",
                       "run the same command again (finished shards are kept)")
    results[task.name] = result
    log(f"{task.name}: {result.num_examples} examples, {len(result.skipped)} skipped")
  return shards.finish_build(spec, plan, results)

