"""Test setup: 8 fake CPU devices (set before jax is imported) and shared helpers."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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
