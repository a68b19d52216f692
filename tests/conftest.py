"""Test setup: 8 fake CPU devices (set before jax is imported) and shared helpers."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# XLA's CPU compiles dominate the suite's time; tests (and the subprocesses they start: kill and
# resume runs) compile the same programs repeatedly, so they share a persistent compilation cache.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), ".cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pathlib

import pytest

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_video():
  """Path getter for the real videos in ../shared/data; skips with a reason when absent."""

  def get(name: str) -> pathlib.Path:
    path = SHARED_DATA / name
    if not path.exists():
      pytest.skip(f"{path} is absent: ../shared/data is only beside the project in CI and dev checkouts")
    return path

  return get
