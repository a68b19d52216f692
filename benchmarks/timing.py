"""Timing shared by the side-by-side benchmarks (run as `python benchmarks/NAME.py`, so this folder is on sys.path)."""

from __future__ import annotations

import time


def best_seconds(fn, repeats: int) -> float:
  """Seconds per call, best of `repeats` after one warm-up call (which pays for compiling)."""
  fn()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best
