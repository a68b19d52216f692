"""MetricWriter (read back from the event file), ProgressLine and MFU."""

from __future__ import annotations

import io
import math
import struct

import jax
import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto import event_pb2

from vidjax.errors import InputError
from vidjax.train.logging import MetricWriter, ProgressLine, model_flops_utilization

# Distinct solid colours, so that GIF palettes reproduce them exactly.
COLORS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255]], np.uint8)


def _events(logdir) -> list[event_pb2.Event]:
  """Every event in the one event file: TFRecords of (u64 length, u32 crc, data, u32 crc)."""
  (path,) = logdir.glob("events.out.tfevents.*")
  data, offset, events = path.read_bytes(), 0, []
  while offset < len(data):
    (length,) = struct.unpack("<Q", data[offset:offset + 8])
    events.append(event_pb2.Event.FromString(data[offset + 12:offset + 12 + length]))
    offset += 12 + length + 4
  return events


def _values(logdir) -> dict[tuple[str, int], object]:
  return {(value.tag, event.step): value for event in _events(logdir) for value in event.summary.value}


def _clips(batch: int, length: int, height: int = 6, width: int = 5) -> np.ndarray:
  """(batch, length, H, W, 3): clip b, frame t is solid COLORS[(b * length + t) % len(COLORS)]."""
  index = np.arange(batch * length).reshape(batch, length) % len(COLORS)
  return np.broadcast_to(COLORS[index][:, :, None, None], (batch, length, height, width, 3)).copy()


def _decode(image) -> Image.Image:
  return Image.open(io.BytesIO(image.encoded_image_string))


def test_scalars_and_videos_are_in_the_event_file(tmp_path):
  writer = MetricWriter(str(tmp_path))
  writer.scalars(1, {"loss": 0.5, "lr": np.float32(0.25)})
  writer.scalars(2, {"loss": jax.numpy.asarray(0.125)})
  writer.video(2, "sample", _clips(1, 3)[0], fps=10)
  writer.video(3, "batch", _clips(2, 3))
  writer.close()
  values = _values(tmp_path)
  assert {key: v.simple_value for key, v in values.items() if v.HasField("simple_value")} == {
      ("loss", 1): 0.5, ("lr", 1): 0.25, ("loss", 2): 0.125}

  animation = values[("sample/animation", 2)].image
  assert animation.encoded_image_string[:6] == b"GIF89a"
  gif = _decode(animation)
  assert (gif.n_frames, gif.size, gif.info["duration"]) == (3, (5, 6), 100)
  for t in range(3):
    gif.seek(t)
    assert (np.asarray(gif.convert("RGB")) == COLORS[t]).all()

  batch = _decode(values[("batch/animation", 3)].image)  # clips side by side
  batch.seek(1)
  assert batch.size == (10, 6)
  assert (np.asarray(batch.convert("RGB"))[:, :5] == COLORS[1]).all()
  assert (np.asarray(batch.convert("RGB"))[:, 5:] == COLORS[4]).all()

  strip = values[("batch/frames", 3)].image  # one row per clip, one column per frame
  assert strip.encoded_image_string[:4] == b"\x89PNG"
  pixels = np.asarray(_decode(strip).convert("RGB"))
  assert pixels.shape == (12, 15, 3)
  for b in range(2):
    for t in range(3):
      assert (pixels[b * 6:(b + 1) * 6, t * 5:(t + 1) * 5] == COLORS[b * 3 + t]).all()


def test_only_process_zero_writes(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  writer = MetricWriter(str(tmp_path / "logs"))
  writer.scalars(1, {"loss": 1.0})
  writer.video(1, "sample", _clips(1, 2)[0])
  with pytest.raises(InputError, match="uint8"):  # still checked, so every process fails alike
    writer.video(1, "sample", np.zeros((2, 4, 4, 3), np.float32))
  writer.close()
  assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("frames", [np.zeros((2, 4, 4, 3), np.float32), np.zeros((2, 4, 4, 4), np.uint8),
                                    np.zeros((4, 4, 3), np.uint8), np.zeros((0, 4, 4, 3), np.uint8)])
def test_video_rejects_bad_frames(tmp_path, frames):
  writer = MetricWriter(str(tmp_path))
  with pytest.raises(InputError, match=r"\(T, H, W, 3\)"):
    writer.video(0, "bad", frames)
  writer.close()


def test_progress_line():
  times = iter([0.0, 1.0, 3.0, 3.5])
  lines = []
  progress = ProgressLine(5, clips_per_step=4, frames_per_clip=8, every=2, print_fn=lines.append,
                          clock=lambda: next(times))
  assert progress.first_smoothed is None and progress.last_smoothed is None
  assert progress.update(1, {"loss": 4.0}) is None
  progress.update(2, {"loss": 2.0, "lr": 1e-4})
  progress.update(3, {"loss": math.nan}, clips=8, frames=8)  # an image step whose update was skipped
  progress.update(4, {"loss": 1.0})
  progress.update(5, {"loss": 1.0})
  assert lines == [
      "step 2/5 (40.0%) | loss 2.0000 (smoothed 3.8000) | 8.0 clips/s 64.0 frames/s | lr 1.00e-04 | eta 0:00:02",
      "step 4/5 (80.0%) | loss 1.0000 (smoothed 3.5200) | 6.0 clips/s 20.0 frames/s | eta 0:00:01",
      "step 5/5 (100.0%) | loss 1.0000 (smoothed 3.2680) | 8.0 clips/s 64.0 frames/s | eta 0:00:00"]
  assert progress.first_smoothed == pytest.approx(3.8)
  assert progress.last_smoothed == pytest.approx(3.268)


def test_model_flops_utilization():
  result = model_flops_utilization(8e15, seconds_per_step=2.0, peak_flops_per_device=1e15, num_devices=8)
  assert result == pytest.approx({"tflops": 500.0, "mfu": 0.5})
  with pytest.raises(InputError, match="seconds_per_step"):
    model_flops_utilization(8e15, seconds_per_step=0.0, peak_flops_per_device=1e15, num_devices=8)


def test_progress_bar_counts_steps_from_the_resumed_step_and_shows_the_smoothed_loss(capsys):
  lines = []
  progress = ProgressLine(5, clips_per_step=1, frames_per_clip=1, every=10, start_step=2, desc="UNet stage",
                          print_fn=lines.append, bar=True)
  for step in (3, 4, 5):
    progress.update(step, {"loss": 0.5})
  bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
  assert bar.startswith("UNet stage: 100%") and "5/5" in bar and "loss 0.5000" in bar, bar
  assert len(lines) == 1 and lines[0].startswith("step 5/5 (100.0%) | loss 0.5000 (smoothed 0.5000)")  # the last step
