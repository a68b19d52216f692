"""Helpers for the data tests: toy videos written with PyAV, and small shard folders."""

from __future__ import annotations

import os
import pathlib

import av
import numpy as np

from data_pipelines import build_shards
from vidjax.toyworld import render_clip


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 12) -> pathlib.Path:
  """Writes uint8 (T, H, W, 3) frames as an h264 mp4 (H, W even)."""
  with av.open(os.fspath(path), "w") as container:
    stream = container.add_stream("libx264", rate=fps)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())
  return pathlib.Path(path)


def toy_frames(seed: int, num_frames: int, size: int = 48) -> np.ndarray:
  return render_clip(seed, num_frames=num_frames, height=size, width=size).rgb


def build_toy_shards(folder: str | os.PathLike, num_examples: int, *, num_frames: int = 4,
                     size: int = 16, examples_per_shard: int = 5,
                     extra: tuple[str, ...] = ()) -> int:
  """Builds toy shards with the command-line entry point; returns its exit status."""
  return build_shards.main([
      "--source", "toy", "--num_examples", str(num_examples), "--output_dir", os.fspath(folder),
      "--num_frames", str(num_frames), "--stride", "2", "--height", str(size), "--width",
      str(size), "--examples_per_shard", str(examples_per_shard), *extra])
