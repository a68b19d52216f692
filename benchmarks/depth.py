"""Frames/s of vidjax's jitted DPT against transformers' PyTorch DPT, same weights and input, on CPU.

  python benchmarks/depth.py                  # both layouts, 4 frames of 256x256, 3 timed runs
  python benchmarks/depth.py --layouts large --frames 8 --repeats 5

Prints, per layout: compile time (apart), frames/s of each, the ratio ours/torch, and GFLOP/s of
each from one FLOP count: XLA's `cost_analysis()` of our compiled forward (both run the same
network, so the count is shared). PyTorch gets `torch.set_num_threads` equal to the cores XLA's
CPU client uses (this process's CPU affinity), so both use the same cores. The configs are
mid-size stand-ins for MiDaS (ViT hidden 192, 12 layers, 3 heads; the hybrid with a 3-stage BiT)
so that each layout runs in well under a minute on 2 cores; the outputs are also compared.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import numpy as np
import torch
from transformers import DPTConfig as HFDPTConfig
from transformers import DPTForDepthEstimation

from vidjax.convert.hf_dpt import convert_dpt
from vidjax.models.depth import DPT

from timing import best_seconds

VIT = dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
           backbone_out_indices=[2, 5, 8, 11], fusion_hidden_size=64, image_size=256, patch_size=16)
LAYOUTS = {
    "large": dict(VIT, neck_hidden_sizes=[48, 96, 192, 192], reassemble_factors=[4, 2, 1, 0.5]),
    "hybrid": dict(VIT, is_hybrid=True, neck_hidden_sizes=[64, 128, 192, 192], reassemble_factors=[1, 1, 1, 0.5],
                   backbone_featmap_shape=[1, 256, 16, 16],
                   backbone_config=dict(global_padding="same", layer_type="bottleneck", depths=[1, 2, 3],
                                        hidden_sizes=[64, 128, 256], embedding_size=32, num_groups=8,
                                        out_features=["stage1", "stage2", "stage3"], embedding_dynamic_padding=True)),
}


def _flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis["flops"])


def bench(layout: str, frames: int, repeats: int) -> None:
  torch.manual_seed(0)
  torch_model = DPTForDepthEstimation(HFDPTConfig(**LAYOUTS[layout])).eval()
  with tempfile.TemporaryDirectory() as folder:
    torch_model.save_pretrained(folder)
    config, params, _ = convert_dpt(folder)
  size = config.image_size
  pixels = np.random.default_rng(0).uniform(-1, 1, (frames, *size, 3)).astype(np.float32)
  params = jax.device_put(params)

  start = time.perf_counter()
  compiled = jax.jit(DPT(config).apply).lower({"params": params}, pixels).compile()
  compile_s = time.perf_counter() - start
  ours_s = best_seconds(lambda: compiled({"params": params}, pixels).block_until_ready(), repeats)
  ours = np.asarray(compiled({"params": params}, pixels))

  torch_pixels = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
  with torch.inference_mode():
    torch_s = best_seconds(lambda: torch_model(torch_pixels), repeats)
    ref = torch_model(torch_pixels).predicted_depth.numpy()

  flops = _flops(compiled)
  error = np.abs(ours - ref).max() / np.abs(ref).max()
  print(f"{layout:>6} {size[0]}x{size[1]} x{frames}: compile {compile_s:5.1f} s | ours {frames / ours_s:6.2f} "
        f"frames/s, {flops / ours_s / 1e9:6.1f} GFLOP/s | torch {frames / torch_s:6.2f} frames/s, "
        f"{flops / torch_s / 1e9:6.1f} GFLOP/s | ours/torch {torch_s / ours_s:4.2f} | "
        f"{flops / frames / 1e9:.2f} GFLOP/frame | max rel diff {error:.1e}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--layouts", nargs="+", choices=sorted(LAYOUTS), default=["large", "hybrid"])
  parser.add_argument("--frames", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  threads = len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__}; {threads} threads each")
  for layout in args.layouts:
    bench(layout, args.frames, args.repeats)


if __name__ == "__main__":
  main()
