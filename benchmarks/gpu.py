"""Accelerator benchmark: the Make-Your-Video-sized UNet's train-step MFU and a 50-step DDIM + CFG sample time.

  python benchmarks/gpu.py --size full     # on a lent H100 / H200: what to run there
  python benchmarks/gpu.py --size tiny     # a few-channel UNet on CPU in seconds (the test suite runs this)

Sizes:
  * full: configs/make_your_video.py's model (SD-2-depth UNet with pseudo-3D temporal convs and causal
    temporal attention with relative positions, OpenCLIP ViT-H text tower), 16 frames of 256x256 pixels
    = 32x32 latents, bfloat16 compute (float32 params), cuDNN spatial attention, remat on (the config's).
  * tiny: the same blocks at one 32-channel level (down, mid, up) with 1 res block, a 1-layer text
    tower, 2 frames of 16x16 pixels (8x8 latents), float32, XLA attention, no remat (XLA's CPU
    compiles are the tiny run's cost, and remat compiles the forward twice).
Figures (one JSON object a line):
  * train_step: the repo's train step (vidjax.train.step: text tower, structure, the one diffusion
    loss, AdamW, EMA) on batches with cached VAE latents (no VAE encoder in the step), every UNet param
    trained, so the backward computes both products of every matmul. MFU = the model count
    (vidjax.models.flops.unet_train_flops: UNet matmuls, 3x the forward; remat's recomputation and the
    text tower are not counted) / seconds per step / the device's peak. XLA's cost_analysis() of the
    compiled step is printed beside it (it counts remat, elementwise ops and the optimizer, but not
    cuDNN's custom calls).
  * sample: `vidjax.sampling.generate.sample_latents` (the one sampling path: the jitted Sampler),
    50 DDIM steps with classifier-free guidance (a 2B batch per step), the causal window L_M = the
    clip's frames; best of --sample_repeats after a compiled warm-up. FLOPs counted = steps x the
    UNet forward on 2B clips.
Peak: a table of dense bf16 peaks by device kind (H100/H200 SXM 989.4 TFLOP/s, H100 PCIe 756,
A100 312), --peak_tflops to override; on CPU the float32 GEMM rate XLA reaches on a large matmul,
measured in the same run (so a CPU "MFU" is a fraction of what this machine's matmuls reach).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import make_your_video  # noqa: E402
from timing import best_seconds, gemm_gflops, machine_line  # noqa: E402
from train_step import compile_step, peak_memory_bytes, time_steps, xla_flops  # noqa: E402
from vidjax import toyworld  # noqa: E402
from vidjax.models import flops  # noqa: E402
from vidjax.sampling import generate  # noqa: E402

# Dense bf16 tensor-core peaks (FLOP/s), matched in order against jax's device_kind.
PEAK_BF16 = (("H200", 989.4e12), ("H100 PCIe", 756.0e12), ("H100", 989.4e12), ("A100", 312.0e12))


@dataclasses.dataclass(frozen=True)
class Size:
  """One benchmark size: the clip, the batch and what changes from configs/make_your_video.py."""

  frames: int
  pixels: int  # height = width of the frames
  batch: int  # clips per train step and per sample
  unet: dict  # UNetConfig fields over the config's
  text_encoder: dict = dataclasses.field(default_factory=dict)
  vae: dict = dataclasses.field(default_factory=dict)


SIZES = {
    "full": Size(frames=make_your_video.FRAMES, pixels=256, batch=2,
                 unet=dict(dtype="bfloat16", attention_backend="cudnn")),
    "tiny": Size(frames=2, pixels=16, batch=1,
                 unet=dict(block_out_channels=(32,), layers_per_block=1, attention_levels=(True,),
                           num_attention_heads=(2,), cross_attention_dim=32, norm_num_groups=8, dtype="float32",
                           attention_backend="xla", remat=False),
                 text_encoder=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1),
                 vae=dict(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4)),
}


def benchmark_config(size: Size, tokenizer_dir: str):
  """configs/make_your_video.py at `size`, every UNet param trained (see the module docstring)."""
  config = make_your_video.get_config()
  config.model.unet.update(size.unet)
  config.model.text_encoder.update(size.text_encoder)
  config.model.vae.update(size.vae)
  config.data.tokenizer_dir = tokenizer_dir
  config.data.batch_size = size.batch
  config.train.trainable = ("unet/.*",)
  if size.text_encoder:  # the toy tokenizer's ids must fit a shrunk vocabulary
    config.model.text_encoder.vocab_size = len(toyworld.build_tokenizer())
  return config


def peak_flops(device, override_tflops: float, cpu_gemm_gflops: float | None) -> tuple[float, str]:
  """(peak FLOP/s, where it comes from) for `device`."""
  if override_tflops:
    return override_tflops * 1e12, "--peak_tflops"
  for name, peak in PEAK_BF16:
    if name in device.device_kind:
      return peak, f"table: {name} dense bf16"
  if device.platform == "cpu" and cpu_gemm_gflops:
    return cpu_gemm_gflops * 1e9, "measured: XLA float32 GEMM on this CPU"
  return math.nan, f"unknown device kind {device.device_kind!r}: pass --peak_tflops"


def emit(record: dict) -> None:
  print(json.dumps(record), flush=True)


def train_figures(config, size: Size, steps: int, peak: float) -> tuple[dict, object, object]:
  """Compiles and times the train step; returns (figures, model, final params)."""
  start = time.perf_counter()
  fn, state, batch, model = compile_step(config, size.batch, size.frames, size.pixels, cached_latents=True)
  compile_seconds = time.perf_counter() - start
  seconds, state = time_steps(fn, state, batch, steps)
  f = model.config.vae.downsample_factor
  counted = flops.unet_train_flops(model.config.unet, batch=size.batch, frames=size.frames, height=size.pixels // f,
                                   width=size.pixels // f, context_length=len(model.config.null_tokens))
  figures = dict(batch=size.batch, frames=size.frames, latent=size.pixels // f, steps=steps,
                 init_compile_seconds=compile_seconds, seconds_per_step=seconds, frames_per_second=size.batch *
                 size.frames / seconds, flops_counted=counted, xla_flops=xla_flops(fn), tflops=counted / seconds / 1e12,
                 mfu=counted / seconds / peak, peak_memory_gib=peak_memory_bytes() / 2**30)
  return figures, model, state.params


def sample_figures(model, params, size: Size, steps: int, repeats: int, peak: float) -> dict:
  """Times `steps` DDIM + CFG steps through the one sampling path (structure and text encoded outside the timing)."""
  rng = np.random.default_rng(1)
  f, channels = model.config.vae.downsample_factor, model.config.vae.latent_channels
  latent_hw = (size.pixels // f, size.pixels // f)
  depth = rng.uniform(0, 1, (size.batch, size.frames, size.pixels, size.pixels, 1)).astype(np.float32)
  structure = generate.encode_structure(model, params, depth, np.zeros((size.batch,), np.int32), latent_hw)
  tokens = np.broadcast_to(np.asarray(model.config.null_tokens, np.int32), (size.batch, len(model.config.null_tokens)))
  context, null_context = generate.encode_content(model, params, tokens=tokens)
  call = lambda: generate.sample_latents(
      model, params, structure=structure, context=context, null_context=null_context,
      shape=(size.batch, size.frames, *latent_hw, channels), seed=0, num_inference_steps=steps,
      guidance_scale=7.5, temporal_window=size.frames).block_until_ready()
  start = time.perf_counter()
  call()
  compile_seconds = time.perf_counter() - start
  seconds = best_seconds(call, repeats)
  counted = steps * flops.unet_forward_flops(model.config.unet, batch=2 * size.batch, frames=size.frames,
                                             height=latent_hw[0], width=latent_hw[1],
                                             context_length=context.shape[1], temporal_window=size.frames)
  return dict(steps=steps, guidance="cfg", batch=size.batch, frames=size.frames,
              compile_and_first_seconds=compile_seconds,
              seconds=seconds, seconds_per_step=seconds / steps, flops_counted=counted, tflops=counted / seconds / 1e12,
              mfu=counted / seconds / peak)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", choices=sorted(SIZES), default="full")
  parser.add_argument("--batch", type=int, default=0, help="clips per step (default: the size's)")
  parser.add_argument("--train_steps", type=int, default=10, help="timed train steps after the warm-up")
  parser.add_argument("--sample_steps", type=int, default=50, help="DDIM steps")
  parser.add_argument("--sample_repeats", type=int, default=3)
  parser.add_argument("--peak_tflops", type=float, default=0.0, help="the device's peak, TFLOP/s (default: table)")
  args = parser.parse_args(argv)
  size = SIZES[args.size]
  if args.batch:
    size = dataclasses.replace(size, batch=args.batch)
  device = jax.devices()[0]
  gemm = gemm_gflops(n=1024) if device.platform == "cpu" and not args.peak_tflops else None
  peak, peak_source = peak_flops(device, args.peak_tflops, gemm and gemm["xla"])
  emit(dict(benchmark="gpu", size=args.size, machine=machine_line(), device=device.device_kind,
            peak_tflops=peak / 1e12, peak_source=peak_source, cpu_gemm_gflops=gemm))
  with tempfile.TemporaryDirectory() as tmp:
    toyworld.save_tokenizer(os.path.join(tmp, "tok"))
    config = benchmark_config(size, os.path.join(tmp, "tok"))
    train, model, params = train_figures(config, size, args.train_steps, peak)
    emit(dict(unet=dataclasses.asdict(model.config.unet), context_length=len(model.config.null_tokens)))
    emit(dict(train_step=train))
    emit(dict(sample=sample_figures(model, params, size, args.sample_steps, args.sample_repeats, peak)))
  emit(dict(load_average_at_end=os.getloadavg()))
  return 0


if __name__ == "__main__":
  sys.exit(main())
