"""Video IO: real codecs, frame selection by count/stride/fps/time, grayscale, round trips through
mp4 and gif, atomic writes, resizing, grids, and clear errors for bad files."""

from __future__ import annotations

import os

import av
import numpy as np
import pytest

from vidjax.data import video_io
from vidjax.errors import InputError
from vidjax.toyworld import render_clip


def _frame_times(path) -> list[float]:
  """Presentation times of a video whose timestamps are in display order (read with PyAV)."""
  with av.open(os.fspath(path)) as container:
    return [frame.time for frame in container.decode(video=0)]


def test_shared_h264_by_count_stride_time_and_fps(shared_video):
  box = shared_video("box.mp4")
  info = video_io.probe(box)
  assert (info.width, info.height, info.codec) == (640, 480, "h264")
  assert info.fps == pytest.approx(29.97, abs=0.01)
  assert info.duration_sec == pytest.approx(15.18, abs=0.01)
  everything = video_io.read_video(box, max_frames=152)
  assert everything.shape == (152, 480, 640, 3) and everything.dtype == np.uint8
  np.testing.assert_array_equal(video_io.read_video(box, num_frames=8, stride=4), everything[:32:4])
  # Frame i is shown from i * 1001 / 30000 s. This mp4 stores decode-order timestamps, so these
  # only pass if the reader puts the timestamps back in display order.
  at_2_fps = video_io.read_video(box, fps=2, num_frames=4)
  np.testing.assert_array_equal(at_2_fps, everything[[0, 14, 29, 44]])
  from_5_sec = video_io.read_video(box, start_sec=5.0, num_frames=3)  # seeks to a keyframe first
  np.testing.assert_array_equal(from_5_sec, everything[149:152])


def test_shared_cinepak_with_dropped_frames_resamples_by_timestamp(shared_video):
  tree = shared_video("tree.avi")
  info = video_io.probe(tree)
  assert (info.width, info.height, info.codec) == (320, 240, "cinepak")
  everything = video_io.read_video(tree)
  assert everything.shape == (68, 240, 320, 3)  # 68 stored frames over 29.6 s (444 at 15 fps)
  resampled = video_io.read_video(tree, fps=2)
  shown = np.searchsorted(_frame_times(tree), np.arange(len(resampled)) / 2, side="right") - 1
  assert len(resampled) == 60
  np.testing.assert_array_equal(resampled, everything[shown])
  with pytest.raises(InputError, match="too few frames: only 34") as error:
    video_io.read_video(tree, num_frames=40, stride=2)
  assert "tree.avi" in str(error.value)


@pytest.mark.parametrize("name", ["clip.mp4", "clip.gif"])
def test_toy_clip_round_trip_within_codec_error(tmp_path, name):
  frames = render_clip(5, num_frames=8, height=48, width=64).rgb
  assert video_io.write_video(tmp_path / name, frames, fps=8) == os.fspath(tmp_path / name)
  back = video_io.read_video(tmp_path / name)
  assert back.shape == frames.shape
  assert np.abs(back.astype(np.float32) - frames).mean() < 8
  assert video_io.probe(tmp_path / name).fps == pytest.approx(8, rel=0.05)


def test_mp4_odd_sizes_mpeg4_fallback_and_repeated_gif_frames(tmp_path, monkeypatch):
  frames = render_clip(1, num_frames=4, height=33, width=47).rgb
  video_io.write_video(tmp_path / "odd.mp4", frames)
  back = video_io.read_video(tmp_path / "odd.mp4")
  assert back.shape == (4, 34, 48, 3)  # padded to even sides by repeating the edge
  assert np.abs(back[:, :33, :47].astype(np.float32) - frames).mean() < 8
  monkeypatch.setattr(video_io, "_MP4_CODEC", "mpeg4")
  video_io.write_video(tmp_path / "mpeg4.mp4", frames[:, :32, :46])
  assert video_io.probe(tmp_path / "mpeg4.mp4").codec == "mpeg4"
  back = video_io.read_video(tmp_path / "mpeg4.mp4")
  assert np.abs(back.astype(np.float32) - frames[:, :32, :46]).mean() < 8
  video_io.write_video(tmp_path / "still.gif", frames[[0, 0, 0, 1]])
  assert len(video_io.read_video(tmp_path / "still.gif")) == 4  # identical frames are kept


@pytest.mark.parametrize("name,codec", [("gray.mkv", "ffv1"), ("gray.gif", "gif")])
def test_grayscale_video_reads_back_as_rgb(tmp_path, name, codec):
  gray = np.tile(np.linspace(0, 255, 32).astype(np.uint8)[None, None, :], (4, 24, 1))
  gray[1:] //= 2
  with av.open(os.fspath(tmp_path / name), "w") as container:
    stream = container.add_stream(codec, rate=8)
    stream.width, stream.height, stream.pix_fmt = 32, 24, "gray"
    for frame in gray:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="gray")))
    container.mux(stream.encode())
  frames = video_io.read_video(tmp_path / name)
  assert frames.shape == (4, 24, 32, 3)
  np.testing.assert_array_equal(frames, np.repeat(gray[..., None], 3, axis=-1))


def _raw_h264(path, frames) -> None:
  """An mp4 written without faststart: its index is at the end of the file."""
  with av.open(os.fspath(path), "w") as container:
    stream = container.add_stream("libx264", rate=8)
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())


def test_bad_files_raise_input_errors_naming_the_file(tmp_path):
  frames = render_clip(2, num_frames=12, height=32, width=32).rgb
  good = video_io.write_video(tmp_path / "good.mp4", frames)
  _raw_h264(tmp_path / "index_last.mp4", frames)
  (tmp_path / "empty.mp4").write_bytes(b"")
  (tmp_path / "text.mp4").write_text("this is not a video\n")
  (tmp_path / "folder.mp4").mkdir()
  for source, name in (("good.mp4", "truncated.mp4"), ("index_last.mp4", "truncated_index.mp4")):
    data = (tmp_path / source).read_bytes()
    (tmp_path / name).write_bytes(data[:len(data) // 2])
  problems = {"missing.mp4": "not found", "empty.mp4": "empty", "text.mp4": "cannot be opened",
              "folder.mp4": "not a file", "truncated.mp4": "truncated or corrupt",
              "truncated_index.mp4": "truncated or corrupt"}
  for name, problem in problems.items():
    with pytest.raises(InputError, match=problem) as error:
      video_io.read_video(tmp_path / name)
    assert name in str(error.value) and "Fix:" in str(error.value)
  with pytest.raises(InputError, match="empty"):
    video_io.probe(tmp_path / "empty.mp4")
  with pytest.raises(InputError, match="no frames"):
    video_io.read_video(good, start_sec=60)
  for bad in ({"stride": 0}, {"fps": -1.0}, {"fps": 4, "stride": 2}, {"num_frames": 0}):
    with pytest.raises(InputError):
      video_io.read_video(good, **bad)


@pytest.mark.parametrize("name", ["out.mp4", "out.gif"])
def test_an_interrupted_write_leaves_the_target_untouched(tmp_path, monkeypatch, name):
  frames = render_clip(0, num_frames=3, height=16, width=16).rgb
  (tmp_path / "old.txt").write_text("keep")
  writers = {".mp4": "_write_mp4", ".gif": "_write_gif"}
  real_writer = getattr(video_io, writers[name[-4:]])

  def write_then_fail(path, clip, rate):
    real_writer(path, clip[:1], rate)  # a partial file exists at the temporary path
    raise KeyboardInterrupt

  monkeypatch.setattr(video_io, writers[name[-4:]], write_then_fail)
  with pytest.raises(KeyboardInterrupt):
    video_io.write_video(tmp_path / name, frames)
  assert os.listdir(tmp_path) == ["old.txt"]
  with pytest.raises(InputError, match="unsupported output type"):
    video_io.write_video(tmp_path / "out.avi", frames)
  with pytest.raises(InputError, match="uint8"):
    video_io.write_video(tmp_path / name, frames.astype(np.float32))


def test_resize_center_crop_keeps_the_centre_and_antialiases():
  halves = np.zeros((2, 100, 200, 3), np.uint8)
  halves[:, :, 100:] = 255  # left black, right white
  out = video_io.resize_center_crop(halves, 50, 50)
  assert out.shape == (2, 50, 50, 3)
  assert out[:, :, :20].max() < 10 and out[:, :, 30:].min() > 245  # the centre 100 columns kept
  checker = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
  small = video_io.resize_center_crop(np.repeat(checker[None, ..., None], 3, -1), 16, 16)
  assert np.abs(small.astype(np.float32) - 127.5).max() < 8  # averaged, not sampled


def test_fit_to_multiple_crops_to_the_model_factor_and_says_so():
  frames = np.random.default_rng(0).integers(0, 255, (3, 100, 150, 3), dtype=np.uint8)
  fitted, message = video_io.fit_to_multiple(frames, multiple=32)
  np.testing.assert_array_equal(fitted, frames[:, 2:98, 11:139])
  assert "150x100 to 128x96" in message
  same, message = video_io.fit_to_multiple(fitted, multiple=32)
  assert message is None and same is fitted
  large = np.zeros((1, 480, 640, 3), np.uint8)
  shrunk, message = video_io.fit_to_multiple(large, multiple=64, max_side=320)
  assert shrunk.shape == (1, 192, 320, 3) and "at most 320" in message
  with pytest.raises(InputError, match="too small"):
    video_io.fit_to_multiple(frames[:, :40], multiple=64)


def test_depth_colour_map_is_monotonic_in_brightness():
  ramp = np.tile(np.linspace(3.0, 100.0, 50, dtype=np.float32), (2, 4, 1))
  ramp[1, 0, 0] = np.nan
  colours = video_io.depth_to_rgb(ramp)
  assert colours.shape == (2, 4, 50, 3) and colours.dtype == np.uint8
  luminance = colours[0, 0].astype(np.float32) @ np.array([0.299, 0.587, 0.114])
  assert np.all(np.diff(luminance) > 0)
  np.testing.assert_array_equal(colours[1, 0, 0], colours[0, 0, 0])  # nan gets the low colour


def test_grid_places_labelled_videos_side_by_side():
  clip = render_clip(4, num_frames=3, height=32, width=40)
  half = clip.rgb[:2, ::2, ::2]  # shorter and smaller: resized to 32 high, holds its last frame
  grid = video_io.make_grid([clip.rgb, video_io.depth_to_rgb(clip.disparity), half],
                            ["input", "depth", "output"])
  assert grid.shape == (3, 14 + 32, 40 * 3, 3)
  np.testing.assert_array_equal(grid[:, 14:, :40], clip.rgb)
  np.testing.assert_array_equal(grid[2, 14:, 80:], grid[1, 14:, 80:])
  for column in range(3):
    assert grid[0, :14, 40 * column:40 * column + 40].max() > 200  # label text drawn
  with pytest.raises(InputError, match="one label per video"):
    video_io.make_grid([clip.rgb], ["a", "b"])
