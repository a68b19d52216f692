"""Timing shared by the side-by-side benchmarks (run as `python benchmarks/NAME.py`, so this folder is on sys.path)."""

from __future__ import annotations

import os
import platform
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np


def best_seconds(fn, repeats: int) -> float:
  """Seconds per call, best of `repeats` after one warm-up call (which pays for compiling)."""
  fn()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def cpu_model() -> str:
  """`lscpu`'s model name (what the figures depend on), else the platform's processor string."""
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
  except (OSError, subprocess.SubprocessError):
    out = ""
  names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name:")]
  flags = next((line for line in out.splitlines() if line.startswith("Flags:")), "")
  isa = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else ""
  name = names[0] if names else platform.processor() or platform.machine()
  return f"{name}{', ' + isa if isa else ''}, {os.cpu_count()} CPUs"


def machine_line() -> str:
  """One header line: the CPU, the device jax runs on and the load average (load slows every figure)."""
  load = " ".join(f"{x:.2f}" for x in os.getloadavg())
  return f"CPU {cpu_model()}; jax {jax.__version__} on {jax.devices()[0].device_kind}; load average {load}"


def gemm_gflops(n: int = 2048, repeats: int = 5) -> dict[str, float]:
  """This machine's float32 GEMM rate, GFLOP/s (2 n^3 per (n, n) @ (n, n)), best of `repeats`: numpy's
  BLAS and XLA's jitted dot on the default device. The ceiling a matmul-bound program could reach here."""
  rng = np.random.default_rng(0)
  a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
  da, db = jax.device_put(a), jax.device_put(b)
  dot = jax.jit(jnp.matmul)
  flop = 2 * n ** 3 / 1e9
  return {"numpy": flop / best_seconds(lambda: a @ b, repeats),
          "xla": flop / best_seconds(lambda: dot(da, db).block_until_ready(), repeats)}
