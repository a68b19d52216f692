"""Data throughput: the toy renderer, and the Grain loader with 0 and 2 worker processes.

  python benchmarks/data_loader.py                 # defaults below; about a minute on 2 cores
  python benchmarks/data_loader.py --clips 256 --batches 200

Renderer: toy clips of 8 frames of 64 x 64 on one core (target: >= 500 frames/s). Loader: toy
shards of --clips clips (8 x 64 x 64, stride 4) built in a temporary folder, batches of 8 clips,
12.5% image batches, t_s in 0..7, toy tokenizer; clips/s counts video-batch clips plus image-batch
frames / 8, measured after the first batch (worker start-up is printed apart).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from typing import Callable

import numpy as np

# configs/ and data_pipelines/ are not installed: found beside this folder (as train_step.py does).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import toy as toy_config  # noqa: E402
from data_pipelines import build_shards  # noqa: E402
from vidjax.data import loader
from vidjax.toyworld import render_clip, save_tokenizer

NUM_FRAMES, SIZE, BATCH_SIZE = 8, 64, 8


@dataclasses.dataclass(frozen=True)
class Rate:
  clips: float
  seconds: float
  startup_seconds: float = 0.0

  def line(self, name: str) -> str:
    clips_per_second = self.clips / self.seconds
    return (f"{name:<28} {clips_per_second:8.1f} clips/s {clips_per_second * NUM_FRAMES:9.1f} "
            f"frames/s   (start-up {self.startup_seconds:.1f} s)")


def bench_renderer(num_clips: int) -> Rate:
  render_clip(0, num_frames=NUM_FRAMES, height=SIZE, width=SIZE)  # warm caches
  start = time.perf_counter()
  for seed in range(num_clips):
    render_clip(seed, num_frames=NUM_FRAMES, height=SIZE, width=SIZE, stride=4)
  return Rate(num_clips, time.perf_counter() - start)


def bench_loader(data_dir: str, tokenizer_dir: str, worker_count: int, num_batches: int,
                 consume: Callable[[dict[str, np.ndarray]], None] | None = None) -> Rate:
  """Times `num_batches` batches after the first.

  Args:
    consume: the trainer's step, called on every batch (it should block until the step is done);
      None measures the loader alone.
  """
  config = loader.default_loader_config()
  config.data_dir, config.tokenizer_dir = data_dir, tokenizer_dir
  config.batch_size, config.worker_count = BATCH_SIZE, worker_count
  start = time.perf_counter()
  batches = loader.Loader(config, process_index=0, process_count=1)
  next(batches)
  startup = time.perf_counter() - start
  start, clips = time.perf_counter(), 0.0
  for _ in range(num_batches):
    batch = next(batches)
    if consume is not None:
      consume(batch)
    clips += batch["tokens"].shape[0] / (NUM_FRAMES if batch["is_image"] else 1)
  rate = Rate(clips, time.perf_counter() - start, startup)
  batches.close()
  return rate


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--clips", type=int, default=128, help="clips rendered and in the shards")
  parser.add_argument("--batches", type=int, default=100, help="loader batches timed")
  parser.add_argument("--trainer_steps", type=int, default=10, help="toy train steps timed (0: skip the trainer)")
  args = parser.parse_args(argv)
  print(f"toy clips of {NUM_FRAMES} x {SIZE} x {SIZE}; loader batch {BATCH_SIZE} clips, "
        f"{args.clips} clips in the shards, {args.batches} batches timed")
  print(bench_renderer(args.clips).line("renderer (1 core)"))
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = os.path.join(tmp, "shards")
    status = build_shards.main([
        "--source", "toy", "--num_examples", str(args.clips), "--output_dir", data_dir,
        "--num_frames", str(NUM_FRAMES), "--height", str(SIZE), "--width", str(SIZE),
        "--examples_per_shard", "32", "--num_workers", "2"])
    if status != 0:
      return status
    tokenizer_dir = save_tokenizer(os.path.join(tmp, "tokenizer"))
    rates = {}
    for workers in (0, 2):
      rates[workers] = bench_loader(data_dir, tokenizer_dir, workers, args.batches)
      print(rates[workers].line(f"loader, {workers} workers"))
  if args.trainer_steps:
    import train_step  # benchmarks/train_step.py: the toy config's jitted step (the README's main job)

    config = toy_config.get_config()
    with tempfile.TemporaryDirectory() as tmp:
      config.data.tokenizer_dir = save_tokenizer(os.path.join(tmp, "tokenizer"))
      consumed = train_step.time_config("toy trainer", config, config.data.batch_size, toy_config.FRAMES,
                                        toy_config.SIZE, args.trainer_steps)
    best = max(rate.clips / rate.seconds for rate in rates.values())
    print(f"the toy trainer consumes {consumed:.1f} clips/s; the loader makes {best / consumed:.0f}x that (target >= 10x)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
