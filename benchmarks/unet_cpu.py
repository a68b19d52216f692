"""Samples/s of our jitted image-mode VideoUNet against diffusers' UNet2DConditionModel, same weights, on CPU.

  python benchmarks/unet_cpu.py                      # SD-2-depth-like, 64..256 channels, 32x32, batch 2
  python benchmarks/unet_cpu.py --channels 128,256,512,512 --latent 48 --repeats 11

Builds a diffusers UNet at a reduced SD-2-depth-like config (5 input channels, linear projections,
cross-attention to a 77-token context, 64-wide heads), saves it, converts it with `convert_unet`, and
times on the same inputs
  * forward: ours jitted vs torch in eval mode under `torch.no_grad()`;
  * forward+backward: ours `jax.jit(jax.value_and_grad(mse))` w.r.t. params vs torch train mode
    with `loss.backward()` (dropout is 0, so train mode computes the same function).
Compile time is measured apart. Ours and torch alternate within each repetition, so load from other
processes on a shared machine hits both alike; the median of `--repeats` after one warm-up is
reported. GFLOP/s of both come from one analytic count (`vidjax.models.flops`). Torch gets as many
threads as XLA's CPU client runs compute on: its intra-op pool threads (named XLAEigen) counted in
/proc after a jitted call. Outputs, losses and gradient norms are compared, so both time the same
computation. Time it on an otherwise idle machine: the header prints the load average, and with
other processes on the cores torch's OpenMP threads can slow down by 10-100x (medians of seconds),
which makes the ratio meaningless.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from diffusers import UNet2DConditionModel

from vidjax.convert.diffusers_unet import convert_unet
from vidjax.models.flops import unet_forward_flops, unet_train_flops
from vidjax.models.unet import VideoUNet

HEAD_DIM = 64  # SD-2's head width; heads per level = channels / 64


def diffusers_config(channels: tuple[int, ...], latent: int, layers: int, context_dim: int) -> dict:
  """SD-2-depth's UNet layout (cross-attention at every level but the last) at other widths."""
  levels = len(channels)
  return dict(sample_size=latent, in_channels=5, out_channels=4, block_out_channels=channels, layers_per_block=layers,
              down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
              up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
              attention_head_dim=tuple(c // HEAD_DIM for c in channels), cross_attention_dim=context_dim,
              use_linear_projection=True)


def add_config_args(parser: argparse.ArgumentParser) -> None:
  """The benchmark's UNet config and input sizes (shared with unet_cpu_ops.py), and --repeats."""
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--latent", type=int, default=32, help="latent height = width")
  parser.add_argument("--channels", default="64,128,256,256", help="block_out_channels, multiples of 64")
  parser.add_argument("--layers", type=int, default=2, help="layers_per_block")
  parser.add_argument("--context", type=int, default=77, help="context tokens")
  parser.add_argument("--context-dim", type=int, default=256, help="cross_attention_dim")
  parser.add_argument("--repeats", type=int, default=7)


def unet_inputs(args: argparse.Namespace) -> tuple[np.ndarray, ...]:
  """Seeded image-mode inputs: latents (B, 1, S, S, 5), timesteps (B,), context (B, L, D), target (B, 1, S, S, 4)."""
  rng = np.random.default_rng(0)
  b, s = args.batch, args.latent
  return (rng.standard_normal((b, 1, s, s, 5)).astype(np.float32), rng.integers(0, 1000, (b,)).astype(np.int32),
          rng.standard_normal((b, args.context, args.context_dim)).astype(np.float32),
          rng.standard_normal((b, 1, s, s, 4)).astype(np.float32))


def xla_compute_threads() -> int:
  """Threads in XLA's CPU intra-op pool (call after a jitted computation has run).

  Counted in Linux's /proc; elsewhere the CPUs this process may run on, which is what sizes the pool.
  """
  if not os.path.isdir("/proc/self/task"):
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  names = []
  for task in os.listdir("/proc/self/task"):
    with open(f"/proc/self/task/{task}/comm") as f:
      names.append(f.read())
  return sum("XLAEigen" in name for name in names)


def median_seconds(fns: dict, repeats: int) -> dict:
  """Median wall seconds per call of each fn, after one warm-up call each; fns alternate per repetition."""
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: (statistics.median(t), min(t), max(t)) for name, t in times.items()}


def compile_timed(fn, *args):
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  add_config_args(parser)
  args = parser.parse_args()
  channels = tuple(int(c) for c in args.channels.split(","))
  load_at_start = os.getloadavg()[0]

  torch.manual_seed(0)
  torch_model = UNet2DConditionModel(**diffusers_config(channels, args.latent, args.layers, args.context_dim))
  with tempfile.TemporaryDirectory() as folder:
    torch_model.save_pretrained(folder)
    config, params, report = convert_unet(folder)
  assert not report.missing and not report.unexpected, report
  params = jax.device_put(params)

  b, s = args.batch, args.latent
  latents, timesteps, context, target = unet_inputs(args)

  forward = lambda p, x, t, c: VideoUNet(config).apply({"params": p}, x, t, c)
  mse = lambda p, x, t, c, y: jnp.mean((forward(p, x, t, c) - y) ** 2)
  ours_forward, forward_compile_s = compile_timed(forward, params, latents, timesteps, context)
  ours_train, train_compile_s = compile_timed(jax.value_and_grad(mse), params, latents, timesteps, context, target)
  ours_out = np.asarray(ours_forward(params, latents, timesteps, context))
  threads = xla_compute_threads()
  torch.set_num_threads(threads)

  to_nchw = lambda x: torch.from_numpy(np.ascontiguousarray(np.moveaxis(x[:, 0], -1, 1)))
  torch_inputs = (to_nchw(latents), torch.from_numpy(timesteps), torch.from_numpy(context))
  torch_target = to_nchw(target)

  def torch_forward():
    with torch.no_grad():
      return torch_model.eval()(*torch_inputs).sample

  def torch_train():
    torch_model.train().zero_grad(set_to_none=True)
    loss = torch.nn.functional.mse_loss(torch_model(*torch_inputs).sample, torch_target)
    loss.backward()
    return loss.detach()

  ours_loss, ours_grads = ours_train(params, latents, timesteps, context, target)
  torch_loss = torch_train()
  ours_grad_norm = float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree_util.tree_leaves(ours_grads))))
  torch_grad_norm = float(torch.sqrt(sum((p.grad ** 2).sum() for p in torch_model.parameters())))
  out_diff = np.abs(ours_out[:, 0] - np.moveaxis(torch_forward().numpy(), 1, -1)).max()

  sizes = dict(batch=b, frames=1, height=s, width=s, context_length=args.context, image_mode=True)
  flops = {"forward": unet_forward_flops(config, **sizes), "forward+backward": unet_train_flops(config, **sizes)}
  times = {
      "forward": median_seconds({"ours": lambda: ours_forward(params, latents, timesteps, context).block_until_ready(),
                                 "diffusers": torch_forward}, args.repeats),
      "forward+backward": median_seconds(
          {"ours": lambda: jax.block_until_ready(ours_train(params, latents, timesteps, context, target)),
           "diffusers": torch_train}, args.repeats),
  }

  print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}: {threads} XLA compute "
        f"threads -> torch.set_num_threads({threads}); XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
        f"load average at start {load_at_start:.2f}")
  print(f"config: channels {channels}, {args.layers} layers/block, heads {config.num_attention_heads}, "
        f"cross_attention_dim {args.context_dim}, latent {s}x{s}x5, batch {b}, context {args.context}; "
        f"median of {args.repeats}")
  print(f"compile (ours): forward {forward_compile_s:.1f} s, forward+backward {train_compile_s:.1f} s")
  print(f"agreement: forward max abs diff {out_diff:.1e} (|out| max {np.abs(ours_out).max():.2f}); loss "
        f"{float(ours_loss):.6f} vs {float(torch_loss):.6f}; grad norm rel diff "
        f"{abs(ours_grad_norm - torch_grad_norm) / torch_grad_norm:.1e}")
  print(f"{'':>17} {'GFLOP':>7} | {'ours samples/s':>14} {'GFLOP/s':>7} | {'diffusers samples/s':>19} "
        f"{'GFLOP/s':>7} | {'ours/diffusers':>14} | ours min..max s, diffusers min..max s")
  for name, (ours, theirs) in ((k, (v["ours"], v["diffusers"])) for k, v in times.items()):
    gflop = flops[name] / 1e9
    print(f"{name:>17} {gflop:7.2f} | {b / ours[0]:14.2f} {gflop / ours[0]:7.1f} | {b / theirs[0]:19.2f} "
          f"{gflop / theirs[0]:7.1f} | {theirs[0] / ours[0]:14.2f} | {ours[1]:.3f}..{ours[2]:.3f}, "
          f"{theirs[1]:.3f}..{theirs[2]:.3f}")


if __name__ == "__main__":
  main()
