"""Training metrics and samples for TensorBoard, the console progress line, and MFU.

Videos: tensorboardX's `add_video` needs moviepy and, without it, logs an error and writes
nothing. `MetricWriter.video` encodes the animated GIF itself (Pillow) and writes it as an image
summary, which TensorBoard's Images tab plays, plus a still strip of the frames.
"""

from __future__ import annotations

import datetime
import io
import math
import time
from typing import Callable, Mapping

import jax
import numpy as np
import tensorboardX
from PIL import Image
from tensorboardX.proto import summary_pb2
from tqdm.auto import tqdm

from vidjax.errors import InputError


def _as_clips(frames: np.ndarray) -> np.ndarray:
  """(B, T, H, W, 3) uint8 from (T, H, W, 3) or (B, T, H, W, 3), or an InputError."""
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim not in (4, 5) or frames.shape[-1] != 3 or 0 in frames.shape:
    raise InputError("video frames", f"got {frames.dtype} of shape {frames.shape}",
                     "pass uint8 RGB frames shaped (T, H, W, 3) or (B, T, H, W, 3)")
  return frames if frames.ndim == 5 else frames[None]


def _gif(frames: np.ndarray, fps: int) -> bytes:
  """Animated, looping GIF of (T, H, W, 3) uint8 frames (GIF stores delays in 10 ms units)."""
  images = [Image.fromarray(frame) for frame in frames]
  buffer = io.BytesIO()
  images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=1000 / fps, loop=0)
  return buffer.getvalue()


class MetricWriter:
  """TensorBoard event files in `logdir`, written by process 0 only (others are no-ops)."""

  def __init__(self, logdir: str):
    self.logdir = logdir
    self._writer = tensorboardX.SummaryWriter(logdir) if jax.process_index() == 0 else None

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    """One scalar per name (floats, numpy or jax scalars) at `step`."""
    if self._writer is not None:
      for name, value in values.items():
        self._writer.add_scalar(name, float(value), step)

  def video(self, step: int, tag: str, frames: np.ndarray, fps: int = 8) -> None:
    """A video sample as `<tag>/animation` (animated GIF) and `<tag>/frames` (still strip).

    Args:
      step: the training step.
      tag: the sample's name.
      frames: uint8 (T, H, W, 3), or (B, T, H, W, 3) shown side by side in the animation and as
        one row per clip in the strip (one column per frame).
      fps: playback rate of the animation.
    Raises:
      InputError: frames of another dtype or shape (checked on every process).
    """
    clips = _as_clips(frames)
    if self._writer is None:
      return
    batch, length, height, width, _ = clips.shape
    animation = clips.transpose(1, 2, 0, 3, 4).reshape(length, height, batch * width, 3)
    image = summary_pb2.Summary.Image(height=height, width=batch * width, colorspace=3,
                                      encoded_image_string=_gif(animation, fps))
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=f"{tag}/animation", image=image)])
    self._writer.file_writer.add_summary(summary, step)
    strip = clips.transpose(0, 2, 1, 3, 4).reshape(batch * height, length * width, 3)
    self._writer.add_image(f"{tag}/frames", strip, step, dataformats="HWC")

  def close(self) -> None:
    """Flushes and closes the event file."""
    if self._writer is not None:
      self._writer.close()


class ProgressLine:
  """A tqdm bar (with ETA) on a terminal, and a console line every `every` steps; only process 0 shows them.

  `step 1200/10000 (12.0%) | loss 0.1432 (smoothed 0.1511) | 42.1 clips/s 673.6 frames/s | lr 1.00e-04
  | eta 0:35:02`. The smoothed loss is an exponential moving average, s = f * s + (1 - f) * loss
  with f = `smoothing` (0.9 weighs about the last 10 steps), started at the first loss so it is
  not biased toward zero; non-finite losses (skipped steps) leave it unchanged. Rates and eta come
  from the wall time since the previous line (the first window includes compilation).

  Args:
    total_steps: the run's last step.
    clips_per_step, frames_per_clip: the usual global batch, for clips/s and frames/s.
    every: print when the step is a multiple of `every`, and at `total_steps`.
    start_step: the step the run (re)starts from.
    smoothing: the EMA factor f.
    desc: the bar's label (the stage).
    print_fn, clock: where lines go (default `tqdm.write`, above the bar) and the time source (seconds).
    bar: show the bar; None (default) shows it when stderr is a terminal (tqdm's rule), so logs
      and tests get the lines only.
  """

  def __init__(self, total_steps: int, *, clips_per_step: int, frames_per_clip: int, every: int = 50,
               start_step: int = 0, smoothing: float = 0.9, desc: str = "train",
               print_fn: Callable[[str], None] = tqdm.write, clock: Callable[[], float] = time.perf_counter,
               bar: bool | None = None):
    self.total_steps, self.every, self.smoothing = total_steps, every, smoothing
    self._clips_per_step, self._frames_per_clip = clips_per_step, frames_per_clip
    self._print, self._clock = print_fn, clock
    disable = True if jax.process_index() != 0 else (None if bar is None else not bar)  # None: on a tty only
    self._bar = tqdm(total=total_steps, initial=start_step, desc=desc, unit="step", dynamic_ncols=True,
                     disable=disable)
    self._window_step, self._window_time, self._clips, self._frames = start_step, clock(), 0, 0
    self._smoothed: float | None = None
    self._first_printed: float | None = None

  @property
  def first_smoothed(self) -> float | None:
    """The smoothed loss on the first printed line (None before it)."""
    return self._first_printed

  @property
  def last_smoothed(self) -> float | None:
    """The smoothed loss after the latest update (None before any finite loss)."""
    return self._smoothed

  def update(self, step: int, metrics: Mapping[str, float], *, clips: int | None = None,
             frames: int | None = None) -> str | None:
    """Records the step that just finished; returns the printed line, if this step prints one.

    Args:
      step: the number of finished steps (the state's step after the update).
      metrics: 'loss' and optionally 'lr' (floats, numpy or jax scalars).
      clips, frames: this step's clips and frames, where they differ from the usual batch (image
        steps of joint image-video training).
    """
    loss = float(metrics["loss"])
    if math.isfinite(loss):
      self._smoothed = loss if self._smoothed is None else self.smoothing * self._smoothed + (1 - self.smoothing) * loss
    clips = self._clips_per_step if clips is None else clips
    self._clips += clips
    self._frames += (clips * self._frames_per_clip) if frames is None else frames
    self._bar.update(step - self._bar.n)
    if self._smoothed is not None:
      self._bar.set_postfix_str(f"loss {self._smoothed:.4f}", refresh=False)
    if step == self.total_steps:
      self.close()
    if step % self.every and step != self.total_steps:
      return None
    now = self._clock()
    elapsed, steps = max(now - self._window_time, 1e-9), max(step - self._window_step, 1)
    eta = datetime.timedelta(seconds=round(elapsed / steps * max(self.total_steps - step, 0)))
    smoothed = "n/a" if self._smoothed is None else f"{self._smoothed:.4f}"
    parts = [f"step {step}/{self.total_steps} ({100 * step / self.total_steps:.1f}%)",
             f"loss {loss:.4f} (smoothed {smoothed})",
             f"{self._clips / elapsed:.1f} clips/s {self._frames / elapsed:.1f} frames/s"]
    if "lr" in metrics:
      parts.append(f"lr {float(metrics['lr']):.2e}")
    line = " | ".join(parts + [f"eta {eta}"])
    if self._first_printed is None:
      self._first_printed = self._smoothed
    self._window_step, self._window_time, self._clips, self._frames = step, now, 0, 0
    if jax.process_index() == 0:
      self._print(line)
    return line

  def close(self) -> None:
    """Ends the bar (at the last step, or when a run stops early: preemption, an error)."""
    self._bar.close()


def model_flops_utilization(flops_per_step: float, seconds_per_step: float, peak_flops_per_device: float,
                            num_devices: int) -> dict[str, float]:
  """Achieved model TFLOP/s per device and MFU, the fraction of the devices' peak it reaches.

  Args:
    flops_per_step: model FLOPs of one training step over all devices (forward and backward,
      e.g. from `vidjax.models.flops.unet_train_flops`), not counting rematerialisation.
    seconds_per_step: measured wall time of one step.
    peak_flops_per_device: the accelerator's dense peak for the compute dtype (FLOP/s).
    num_devices: devices the step ran on.
  Returns:
    {'tflops': achieved TFLOP/s per device, 'mfu': achieved / peak}.
  """
  for name, value in (("seconds_per_step", seconds_per_step), ("peak_flops_per_device", peak_flops_per_device),
                      ("num_devices", num_devices), ("flops_per_step", flops_per_step)):
    if not value > 0:
      raise InputError(name, f"must be positive, got {value}", f"pass the measured or known {name}")
  per_device = flops_per_step / seconds_per_step / num_devices
  return {"tflops": per_device / 1e12, "mfu": per_device / peak_flops_per_device}
