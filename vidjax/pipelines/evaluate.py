"""`vidjax evaluate --config configs/eval/<protocol>.py --workdir DIR [--config.num_items=...]`.

Generates (edits) the protocol's items with a checkpoint and scores them with the protocol's metrics,
resumably and data-parallel-ready (`vidjax.eval.job`):

  <workdir>/settings.json   the config the features were computed with (a restart with other settings
                            is refused: its cached features would mix two protocols)
  <workdir>/features/       one .npz of per-item features per item, written as soon as it is computed
  <workdir>/videos/         each item's output beside its source and target (.gif), written with its features
  <workdir>/results.json    the figures (metric, value, count, protocol), checkpoint and code version
  <workdir>/index.html      the figures, then every item's video beside its scores
  <workdir>/logs/           the figures as TensorBoard scalars (step 0)

Process p of P (`jax.process_index()`, `jax.process_count()`, joined by `maybe_initialize_distributed`
under launch.local, SLURM or a TPU VM) computes every P-th item into the shared workdir (the toy
protocol one edit at a time on its first local device); after a barrier, process 0 scores all cached
items, so the figures do not depend on P.
Protocols: 'toy' (configs/eval/toy.py, the embedded default), 'folder' (configs/eval/folder.py: FVD/KVD
of a folder of generated videos against a folder of reference videos, CLIP frame consistency with
CLIP weights) and 'ucf101' (configs/eval/ucf101_fvd.py: Make-Your-Video's zero-shot UCF-101 FVD/KVD).
The video protocols compute I3D/CLIP features a batch at a time, split over every local device
(`--config.num_devices`, 0 = all). A killed job restarted with the same workdir recomputes no cached
item; the models are loaded only when some item is missing. Weights a protocol needs and lacks are
named, with the `vidjax convert` command that makes them, before any work (exit 2); unreadable videos
are skipped and listed with their reasons (exit 3, the readable ones scored).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax
import numpy as np
from absl import flags
from jax.experimental import multihost_utils
from ml_collections import config_flags
from tqdm import tqdm

from tensorboardX import SummaryWriter

from vidjax.data import video_io
from vidjax.errors import EXIT_OK, EXIT_PARTIAL, ConfigError, write_json
from vidjax.eval import job, page, toy_edit, toy_metrics
from vidjax.parallel import maybe_initialize_distributed
from vidjax.pipelines import eval_protocols
from vidjax.pipelines.edit import VideoEditPipeline
from vidjax.train.main import resolve_config_flags

PROTOCOLS = ("toy", "folder", "ucf101")
# The converted weights each video protocol needs (required, optional), checked before any work.
_WEIGHTS = {"folder": (("i3d_dir",), ("clip_dir",)), "ucf101": (("i3d_dir",), ("depth_dir",))}


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(a in ("-h", "--help") for a in argv):
    print(__doc__)
    return 0
  # Fresh flags per call: config_flags finds the --config.* overrides in the argv it is given. The config
  # is found by path as `vidjax train`'s (a bare configs/eval/NAME.py falls back to the installed copy).
  argv = ["vidjax evaluate"] + resolve_config_flags(argv)
  flag_values = flags.FlagValues()
  config = config_flags.DEFINE_config_file("config", None, "evaluation protocol config (configs/eval/*.py)",
                                           flag_values=flag_values, lock_config=True, sys_argv=argv)
  workdir = flags.DEFINE_string("workdir", None, "where cached features and results.json go", flag_values=flag_values)
  try:
    flag_values(argv)
  except flags.Error as e:
    raise ConfigError("vidjax evaluate arguments", str(e),
                      "pass --config configs/eval/<protocol>.py --workdir <dir>") from e
  if config.value is None or not workdir.value:
    raise ConfigError("vidjax evaluate", "--config and --workdir are required",
                      "e.g. --config configs/eval/toy.py --workdir runs/eval_toy")
  results = run(config.value, workdir.value)
  skipped = results.get("skipped") or {}
  for key, entry in skipped.items():
    print(f"skipped {entry['source']}: {entry['reason']}", file=sys.stderr)
  if skipped:
    print(f"vidjax evaluate: {len(skipped)} unreadable video(s) skipped (listed above and in results.json); "
          "the readable ones were scored", file=sys.stderr)
    return EXIT_PARTIAL
  return EXIT_OK


def _settings(config) -> dict[str, Any]:
  if config.get("protocol") not in PROTOCOLS:
    raise ConfigError("config.protocol", f"{config.get('protocol')!r} is not implemented",
                      f"use one of {PROTOCOLS} (configs/eval/toy.py, folder.py, ucf101_fvd.py)")
  return json.loads(config.to_json())


def _check_workdir(workdir: str, settings: dict[str, Any]) -> None:
  """Records the settings on the first run; refuses a restart whose settings differ."""
  path = os.path.join(workdir, "settings.json")
  if os.path.exists(path):
    with open(path) as f:
      recorded = json.load(f)
    if recorded != settings:
      changed = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
      raise ConfigError(workdir, f"holds features computed with other settings (changed: {changed})",
                        "use a new --workdir, or the settings recorded in its settings.json")
  elif jax.process_index() == 0:
    write_json(path, settings)


def run(config, workdir: str) -> dict[str, Any]:
  """Computes the missing items' features, then (process 0) scores every item and writes results.json.

  Returns the results (as written; on other processes: {'computed': n}), plus 'computed', the number of
  items whose features this call computed.
  """
  settings = _settings(config)
  if config.protocol in _WEIGHTS:
    eval_protocols.check_weights(config, *_WEIGHTS[config.protocol])  # before any work
  if config.protocol == "ucf101" and not os.path.isdir(config.checkpoint or ""):
    raise ConfigError("config.checkpoint", f"{config.checkpoint!r} is not a checkpoint directory: the ucf101 "
                      "protocol generates with one", "pass --config.checkpoint=DIR (e.g. the output of "
                      "`vidjax convert make-your-video model.ckpt DIR`)")
  maybe_initialize_distributed()  # under a launcher (launch.local, SLURM, TPU VM): before any backend use
  os.makedirs(workdir, exist_ok=True)
  _check_workdir(workdir, settings)
  if config.protocol != "toy":
    return _run_video_protocol(config, workdir, settings)
  cases = toy_edit.edit_cases(config.num_items, first_seed=config.first_seed, num_frames=config.num_frames,
                              size=config.size, stride=config.stride)
  by_key = {f"toy-{case.seed}": case for case in cases}
  keys = list(by_key)
  pipe: list[VideoEditPipeline] = []  # loaded on the first item that is not cached

  def compute(key: str) -> dict[str, np.ndarray]:
    if not pipe:
      pipe.append(VideoEditPipeline.from_pretrained(config.checkpoint or None, progress=False))
    case = by_key[key]
    result = pipe[0](depth=case.source.disparity, prompt=case.target_caption, seed=case.seed,
                     num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
                     temporal_guidance_scale=1.0)
    output = np.asarray(result.frames)
    grid = video_io.make_grid([case.source.rgb, output, case.target.rgb], ["source", "output", "target"])
    video_io.write_video(os.path.join(workdir, "videos", key + ".gif"), grid)
    return toy_metrics.case_features(output, case)

  cache = job.FeatureCache(os.path.join(workdir, "features"))
  mine = job.process_slice(keys, jax.process_index(), jax.process_count())
  start = time.perf_counter()
  with tqdm(total=len(mine), unit="item", desc="vidjax evaluate", disable=None) as bar:
    def progress(done: int, total: int, rate: float) -> None:
      bar.update(1)
      bar.set_postfix(items_per_s=f"{rate:.2f}")

    _, computed = job.cached_features(cache, mine, compute, progress=progress)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("vidjax evaluate: features cached")
  if jax.process_index() != 0:
    return {"computed": computed}
  features, _ = job.cached_features(cache, keys, compute)
  figures = [metric(job.stack(features, keys, metric.needs)) for metric in toy_metrics.METRICS]
  results = job.write_results(os.path.join(workdir, "results.json"), figures,
                              checkpoint=config.checkpoint or "embedded toy checkpoint",
                              extra={"protocol": config.protocol, "settings": settings, "items": keys})
  scalars = lambda f: {name: float(v) for name, v in f.items() if np.ndim(v) == 0}
  page.write_page(os.path.join(workdir, "index.html"), f"vidjax evaluate: {config.protocol}", figures,
                  [(key, f"videos/{key}.gif", scalars(features[key])) for key in keys])
  with SummaryWriter(os.path.join(workdir, "logs")) as writer:
    for figure in figures:
      writer.add_scalar(f"eval/{figure.metric}", figure.value, 0)
  print(f"{len(keys)} items ({computed} computed in {time.perf_counter() - start:.0f} s, "
        f"{len(keys) - computed} from the cache): "
        + " | ".join(f"{f.metric} {f.value:.4f}" for f in figures))
  print(f"results written to {os.path.join(workdir, 'results.json')}")
  return {**results, "computed": computed}


def _run_video_protocol(config, workdir: str, settings: dict[str, Any]) -> dict[str, Any]:
  """'folder' or 'ucf101': features (sharded, cached), then on process 0 the figures, JSON, page and scalars."""
  start = time.perf_counter()
  if config.protocol == "folder":
    done = eval_protocols.run_folder(config, workdir)
    checkpoint = f"generated videos in {os.path.abspath(config.generated_dir)}"
  else:
    pipe: list[VideoEditPipeline] = []

    def generate(clip: np.ndarray, prompt: str, seed: int) -> np.ndarray:
      if not pipe:
        pipe.append(VideoEditPipeline.from_pretrained(config.checkpoint, depth_estimator=config.depth_dir or None,
                                                      progress=False))
      result = pipe[0](clip, prompt=prompt, seed=seed, num_inference_steps=config.num_inference_steps,
                       guidance_scale=config.guidance_scale, num_frames=config.num_frames,
                       height=config.size, width=config.size)
      return np.asarray(result.frames)

    done = eval_protocols.run_ucf101(config, workdir, generate)
    checkpoint = config.checkpoint
  if done is None:  # not process 0
    return {"computed": 0}
  figures, keys = done["figures"], done["items"]
  results = job.write_results(os.path.join(workdir, "results.json"), figures, checkpoint=checkpoint,
                              extra={"protocol": config.protocol, "settings": settings, "items": keys,
                                     "skipped": done["skipped"]})
  page.write_page(os.path.join(workdir, "index.html"), f"vidjax evaluate: {config.protocol}", figures,
                  [(key, os.path.relpath(path, workdir), done["per_item"].get(key, {}))
                   for key, path in done["videos"].items()])
  with SummaryWriter(os.path.join(workdir, "logs")) as writer:
    for figure in figures:
      writer.add_scalar(f"eval/{figure.metric}", figure.value, 0)
  print(f"{len(keys)} items scored ({done['computed']} computed in {time.perf_counter() - start:.0f} s, "
        f"{len(done['skipped'])} skipped): " + " | ".join(f"{f.metric} {f.value:.4f}" for f in figures))
  print(f"results written to {os.path.join(workdir, 'results.json')}")
  return {**results, "computed": done["computed"]}
