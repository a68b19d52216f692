"""`vidjax build-shards` as an Apache Beam pipeline: the DirectRunner here, Dataflow/Flink/Spark on clusters.

  report = build(spec, ["--runner", "DirectRunner", "--direct_num_workers", "2",
                        "--direct_running_mode", "multi_processing"], log=print)

The same steps as the local builder (`vidjax.data.shards`), as a pipeline:

  Create(pending shards: name, fingerprint, items)   the plan: cheap, nothing decoded
    -> Reshuffle                                      spread the shards over the workers
    -> ParDo(BuildShard)   per shard: decode, cut and fit each item (a bad one is skipped with its
                           reason), depth for batches of clips in one model call (the model is
                           loaded once per worker in DoFn.setup and runs on the worker's
                           accelerator when JAX finds one), latents, records; write under a
                           temporary name, rename, marker (`shards.build_shard`)
  then, in the launching process once the pipeline is done: skipped.jsonl (the skipped items and
  their reasons, from the markers), warnings.jsonl and, last, manifest.json (`shards.finish_build`).
  Beam counters `vidjax/clips_written` and `vidjax/items_skipped` show the progress on a runner's UI.

A shard, not a clip, is the unit of work: a clip's record (frames and depth, 160 KB at 8 x 64 x 64,
3 MB at 16 x 256 x 256) then never crosses a shuffle. A first version that grouped clip records by
shard through a GroupByKey ran at 0.4x the local builder's speed on 2 cores, all of the difference
spent moving records between processes; a cluster would pay for the same bytes in shuffle. Give a
build at least as many shards as workers (--examples_per_shard).

Exactly once: a shard's bytes depend only on its items and the settings (not on the workers' count,
the bundles' order or a retry), a commit is a rename of a complete file, and a retried bundle
commits the same bytes again. A run that dies and is started again reuses every shard whose marker
matches (`shards.plan_build`) and runs the pipeline over the others only.
The output folder must be a file system every worker and the launcher see (local disk for the
DirectRunner; a shared mount such as NFS, Filestore or a GCS FUSE mount on a cluster).
"""

from __future__ import annotations

import logging
import os
from typing import Callable

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from vidjax.data import shards
from vidjax.errors import InputError

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BuildShard(beam.DoFn):
  """A `shards.ShardTask` -> its committed shard's name (`shards.build_shard`)."""

  def __init__(self, spec: shards.BuildSpec):
    self.spec = spec
    self.clips_written = beam.metrics.Metrics.counter("vidjax", "clips_written")
    self.items_skipped = beam.metrics.Metrics.counter("vidjax", "items_skipped")

  def setup(self):
    shards.estimator(self.spec)  # once per worker: a DPT loads its weights here

  def process(self, task: shards.ShardTask):
    result = shards.build_shard(self.spec, task)
    self.clips_written.inc(result.num_examples)
    self.items_skipped.inc(len(result.skipped))
    yield result.name


def pipeline_options(pipeline_args: list[str]) -> PipelineOptions:
  """Beam's options; on the DirectRunner's worker processes, this checkout importable and quieter logs."""
  if not any(a.startswith("--default_sdk_harness_log_level") for a in pipeline_args):
    pipeline_args = [*pipeline_args, "--default_sdk_harness_log_level=ERROR"]
  # The local job service relays each DirectRunner worker's start-up warnings, which say nothing here.
  logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
  # DirectRunner workers are subprocesses: they must import data_pipelines (the DoFns' module).
  paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
  if _ROOT not in paths:
    os.environ["PYTHONPATH"] = os.pathsep.join([_ROOT] + [p for p in paths if p])
  fix = "check the spelling against `vidjax build-shards --help` and Beam's pipeline options"
  try:
    options = PipelineOptions(pipeline_args)
    # A flag neither build-shards nor Beam knows is a typo: refused, as argparse refuses it with --runner local.
    logger = logging.getLogger("apache_beam.options.pipeline_options")
    level = logger.level
    logger.setLevel(logging.ERROR)  # Beam would log 'Discarding unparseable args' first
    try:
      unknown = sorted(set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options()))
    finally:
      logger.setLevel(level)
  except (ValueError, SystemExit) as e:
    raise InputError(" ".join(pipeline_args), f"not Beam pipeline options ({e})", fix) from e
  if unknown:
    raise InputError(f"--{unknown[0]}", "unknown flag (neither build-shards' nor a Beam pipeline option)", fix)
  return options


def run_pipeline(spec: shards.BuildSpec, plan: shards.Plan, options: PipelineOptions) -> None:
  """Writes and commits every pending shard of `plan` (blocks until the pipeline is done)."""
  with beam.Pipeline(options=options) as pipeline:
    _ = (pipeline | "Shards" >> beam.Create(plan.pending, reshuffle=False) | "Spread" >> beam.Reshuffle()
         | "Build" >> beam.ParDo(BuildShard(spec)))


def build(spec: shards.BuildSpec, pipeline_args: list[str],
          log: Callable[[str], None] = lambda message: None) -> shards.BuildReport:
  """Builds (or resumes) the shards with Beam, then writes skipped.jsonl, warnings.jsonl and manifest.json."""
  options = pipeline_options(pipeline_args)  # a typo fails before anything is listed or written
  plan = shards.plan_build(spec, log)
  if plan.pending:
    shards.schema(spec)  # a broken encode_fn fails here, once, not in every worker
    run_pipeline(spec, plan, options)
  results = dict(plan.reused)
  for task in plan.pending:
    result = shards.committed(spec, task.name, task.fingerprint)
    if result is None:
      raise InputError(spec.output_dir, f"the pipeline finished without committing {task.name}",
                       "run the same command again (finished shards are kept)")
    results[task.name] = result
    log(f"{task.name}: {result.num_examples} examples, {len(result.skipped)} skipped")
  return shards.finish_build(spec, plan, results)

