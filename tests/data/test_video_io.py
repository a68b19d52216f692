"""Video IO: real codecs, frame selection, grayscale, atomic writes, and clear errors for bad files."""

from __future__ import annotations

import os

import av
import numpy as np
import pytest

from vidjax.data import video_io
from vidjax.errors import InputError


def test_reads_the_shared_h264_and_cinepak_videos_by_count_stride_and_fps(shared_video):
  box, tree = shared_video("box.mp4"), shared_video("tree.avi")
  info = video_io.probe(box)
  assert (info.width, info.height) == (640, 480) and info.codec == "h264"
  frames = video_io.read_video(box, num_frames=8, stride=4)
  assert frames.shape == (8, 480, 640, 3) and frames.dtype == np.uint8
  every = video_io.read_video(box, max_frames=29)
  np.testing.assert_array_equal(frames[1], every[4])
  assert video_io.read_video(tree).shape == (68, 240, 320, 3)
  half_rate = video_io.read_video(tree, fps=info.fps / 2 if info.fps else 5, max_frames=10)
  assert len(half_rate) == 10
  with pytest.raises(InputError, match="only 68 frames"):
    video_io.read_video(tree, num_frames=100)


def _write_gray_video(path, frames):
  with av.open(str(path), "w") as container:
    stream = container.add_stream("mpeg4", rate=8)
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="gray")))
    container.mux(stream.encode())


def test_grayscale_video_reads_back_as_rgb(tmp_path):
  gray = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, None, :], (4, 24, 1))
  _write_gray_video(tmp_path / "gray.avi", gray)
  frames = video_io.read_video(tmp_path / "gray.avi")
  assert frames.shape == (4, 24, 32, 3)
  assert np.abs(frames[..., 0].astype(int) - frames[..., 2]).max() <= 4  # neutral grey in all channels


def test_bad_files_raise_input_errors_naming_the_file(tmp_path):
  good = tmp_path / "good.mp4"
  video_io.write_video(good, np.zeros((8, 32, 32, 3), np.uint8) + 100)
  (tmp_path / "empty.mp4").write_bytes(b"")
  (tmp_path / "text.mp4").write_text("this is not a video\n")
  (tmp_path / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
  for name in ("missing.mp4", "empty.mp4", "text.mp4", "truncated.mp4"):
    with pytest.raises(InputError) as error:
      video_io.read_video(tmp_path / name)
    assert name in str(error.value) and "Fix:" in str(error.value)


def test_an_interrupted_write_leaves_nothing_at_the_target(tmp_path, monkeypatch):
  target = tmp_path / "out.mp4"

  def fail(*args, **kwargs):
    raise RuntimeError("disk full")

  monkeypatch.setattr(video_io, "_write_mp4", fail)
  with pytest.raises(RuntimeError):
    video_io.write_video(target, np.zeros((2, 16, 16, 3), np.uint8))
  assert os.listdir(tmp_path) == []


def test_fit_to_multiple_and_grid():
  frames = np.random.default_rng(0).integers(0, 255, (3, 100, 150, 3), dtype=np.uint8)
  fitted, changed = video_io.fit_to_multiple(frames, multiple=32)
  assert changed and fitted.shape == (3, 96, 128, 3)
  same, changed = video_io.fit_to_multiple(fitted, multiple=32)
  assert not changed and same is fitted
  grid = video_io.make_grid([fitted, video_io.depth_to_rgb(np.ones((2, 96, 128)) * 0.5)], ["in", "depth"])
  assert grid.shape == (3, 96 + 14, 256, 3)
  np.testing.assert_array_equal(grid[2, 14:, 128:], grid[1, 14:, 128:])  # the shorter video holds its last frame
