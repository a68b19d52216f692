"""I3D features/s (FVD's feature net) of vidjax's jitted linen I3D against cd-fvd's PyTorch `InceptionI3d`.

  python benchmarks/eval.py                        # 4 protocol clips (16 frames, 224x224), best of 3
  python benchmarks/eval.py --clips 8 --repeats 5

Both run the same seeded random weights (ours converted from the PyTorch state dict by
`vidjax.convert.i3d`) on the same preprocessed clips, in one process; the outputs are compared.
Prints clips/s of each, the ratio ours/torch, and GFLOP/s of each from one analytic count: every
convolution's multiply-accumulates over the kernel taps that read inside its input (zero padding is
not model work), times 2, from the shapes our model traces (pools and batch norms left out). PyTorch
gets as many threads as this process may use cores, as XLA's CPU client does. The load average
before and after is printed: on a shared machine the figures move with it.
Needs the oracle: `pip install --no-deps cd-fvd==0.1.1`.
"""

from __future__ import annotations

import argparse
import os
import time

import flax.linen as nn
import jax
import numpy as np
import torch
from cdfvd.third_party.i3d.pytorch_i3d import InceptionI3d

from vidjax.convert.i3d import convert_i3d
from vidjax.models import i3d

from timing import best_seconds


def _valid_taps(size: int, kernel: int, stride: int) -> int:
  """(output, tap) pairs of a TF-'same' padded axis that read inside the input."""
  low = i3d.same_pad(size, kernel, stride)[0]
  return sum(1 for o in range(-(-size // stride)) for k in range(kernel) if 0 <= o * stride - low + k < size)


def conv_flops(config: i3d.I3DConfig, shape: tuple[int, ...]) -> int:
  """2 x the multiply-accumulates of every I3D convolution on inputs of `shape`, from the traced shapes."""
  flops = []

  def count(next_fun, args, kwargs, context):
    if isinstance(context.module, i3d.Conv3D) and context.method_name == "__call__":
      m, x = context.module, args[0]
      taps = np.prod([_valid_taps(n, k, s) for n, k, s in zip(x.shape[1:4], m.kernel, m.strides)])
      flops.append(2 * x.shape[0] * int(taps) * x.shape[-1] * m.features)
    return next_fun(*args, **kwargs)

  params = i3d.param_shapes(config)
  with nn.intercept_methods(count):
    jax.eval_shape(lambda p, v: i3d.I3D(config).apply({"params": p}, v), params,
                   jax.ShapeDtypeStruct(shape, np.float32))
  return sum(flops)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--clips", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  threads = len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)
  load_before = os.getloadavg()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__}; {threads} threads each; "
        f"load average {load_before[0]:.2f} (1 min) before")

  torch.manual_seed(0)
  torch_model = InceptionI3d(400, in_channels=3).eval()
  params, _ = convert_i3d({k: v.numpy() for k, v in torch_model.state_dict().items()})
  params, config = jax.device_put(params), i3d.I3DConfig()
  rng = np.random.default_rng(0)
  videos = rng.integers(0, 256, (args.clips, i3d.PROTOCOL_FRAMES, 256, 320, 3), dtype=np.uint8)
  clips = np.asarray(i3d.preprocess_videos(videos))  # (N, 16, 224, 224, 3) in [-1, 1]

  start = time.perf_counter()
  forward = jax.jit(lambda p, v: i3d.I3D(config).apply({"params": p}, v)).lower(params, clips).compile()
  compile_s = time.perf_counter() - start
  ours_s = best_seconds(lambda: jax.block_until_ready(forward(params, clips)), args.repeats)
  ours = np.asarray(forward(params, clips)["logits"])

  torch_clips = torch.from_numpy(np.ascontiguousarray(clips.transpose(0, 4, 1, 2, 3)))
  with torch.inference_mode():
    torch_s = best_seconds(lambda: torch_model(torch_clips), args.repeats)
    theirs = torch_model(torch_clips).numpy()

  flops = conv_flops(config, clips.shape)
  error = np.abs(ours - theirs).max() / np.abs(theirs).max()
  load_after = os.getloadavg()
  print(f"I3D {clips.shape[1]}x{clips.shape[2]}x{clips.shape[3]} x{args.clips}: compile {compile_s:5.1f} s | "
        f"ours {args.clips / ours_s:6.2f} clips/s, {flops / ours_s / 1e9:6.1f} GFLOP/s | "
        f"torch {args.clips / torch_s:6.2f} clips/s, {flops / torch_s / 1e9:6.1f} GFLOP/s | "
        f"ours/torch {torch_s / ours_s:4.2f} | {flops / args.clips / 1e9:.2f} GFLOP/clip | max rel diff {error:.1e}")
  print(f"load average (1, 5, 15 min) before {tuple(round(x, 2) for x in load_before)}, "
        f"after {tuple(round(x, 2) for x in load_after)}")


if __name__ == "__main__":
  main()
