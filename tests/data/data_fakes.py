"""Helpers for the data tests: toy videos written with PyAV, depth maps, a folder of good and bad videos, small shard folders."""

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


def write_depth(depth_dir, key: str, shape: tuple[int, int, int]) -> None:
  """A precomputed inverse-depth map (a ramp) for clip `key`."""
  path = os.path.join(depth_dir, key + ".npy")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.save(path, np.broadcast_to(np.linspace(1.0, 5.0, shape[2], dtype=np.float32), shape))


def make_video_folder(root) -> dict[str, str]:
  """Two good videos and four bad ones, with a captions CSV; returns {file: caption}."""
  (root / "clips").mkdir(parents=True)
  write_video(root / "good.mp4", toy_frames(1, 10))
  write_video(root / "clips" / "good2.mp4", toy_frames(2, 9))
  write_video(root / "one_frame.mp4", toy_frames(3, 1))
  full = write_video(root / "truncated.mp4", toy_frames(4, 10)).read_bytes()
  (root / "truncated.mp4").write_bytes(full[:len(full) // 2])
  (root / "empty.mp4").write_bytes(b"")
  (root / "notes.mp4").write_text("this is a text file, not a video\n")
  captions = {name: f"video {name}" for name in (
      "good.mp4", "clips/good2.mp4", "one_frame.mp4", "truncated.mp4", "empty.mp4", "notes.mp4")}
  lines = ["path,caption"] + [f"{path},{caption}" for path, caption in captions.items()]
  (root / "captions.csv").write_text("\n".join(lines) + "\n")
  return captions


def folder_args(root, out, *extra) -> list[str]:
  return ["--source", "folder", "--captions", str(root / "captions.csv"), "--output_dir",
          str(out), "--num_frames", "4", "--stride", "2", "--height", "16", "--width", "24",
          "--depth", "folder", "--depth_dir", str(root / "depth"), *extra]
