"""Seconds per edited 16-frame toy video with the embedded checkpoint, split by stage, on this machine.

  python benchmarks/edit.py                       # 25 and 50 steps, with and without temporal guidance
  python benchmarks/edit.py --steps 25 --frames 16 --repeats 3 --checkpoint DIR

For each (steps, guidance) setting: one warm-up call (it compiles; its time is printed apart), then
the median of `repeats` calls of `VideoEditPipeline` on a rendered toy clip (its RGB as the video,
so the depth stage runs the checkpoint's estimator, or its brightness fallback when it bundles
none, as the toy checkpoint does), split into the pipeline's stages: depth / encode (structure,
prompt and, for SDEdit or masks, the source latents) / sampling / decode. Also printed: the UNet
FLOPs the sampling counted (`vidjax.models.flops`, matmuls only, x2 for classifier-free guidance or
x3 for temporal guidance, per step) and the GFLOP/s achieved, and the ratio of temporal-guidance
to plain-CFG sampling time (the 3N vs 2N batch predicts 1.5). The 16 frames are twice the toy
model's training length, so they run through the causal window L_M = 8.

There is no PyTorch reference for this video model (diffusers has no temporal layers); the UNet
against diffusers' UNet2DConditionModel is `benchmarks/unet_cpu.py`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


from vidjax import toyworld
from vidjax.models import flops
from vidjax.pipelines.edit import STAGES, VideoEditPipeline

PROMPT = "a yellow cube and a purple sphere on a checkered floor at night"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the embedded toy model)")
  parser.add_argument("--steps", default="25,50", help="comma-separated DDIM step counts")
  parser.add_argument("--frames", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  pipe = VideoEditPipeline.from_pretrained(args.checkpoint, progress=False)
  video = pipe.model_dir.video
  height, width = video.get("size") or (64, 64)
  clip = toyworld.render_clip(1_000_000, num_frames=args.frames, height=height, width=width,
                              stride=video.get("stride") or 1)
  unet = pipe.model.config.unet
  factor = pipe.model.config.vae.downsample_factor
  context_length = pipe.model.config.text_encoder.max_position_embeddings if pipe.model.config.text_encoder else 1
  # The pipeline always passes causal models a window: past C frames their temporal attention is banded.
  forward = flops.unet_forward_flops(unet, batch=1, frames=args.frames, height=height // factor,
                                     width=width // factor, context_length=context_length,
                                     temporal_window=pipe.max_temporal_window)
  print(f"checkpoint {pipe.model_dir.path}; {args.frames} frames of {width}x{height}; load average "
        f"{os.getloadavg()[0]:.2f} (a loaded machine slows every figure)")
  print(f"UNet forward, one copy of the clip: {forward / 1e9:.2f} GFLOP (matmuls)")
  header = f"{'steps':>5} {'guidance':>9} {'compile+1st s':>13} " + " ".join(f"{s:>9}" for s in STAGES[1:])
  print(header + f" {'total s':>8} {'GFLOP/s':>8}")
  sampling = {}
  for steps in (int(s) for s in args.steps.split(",")):
    for temporal in (1.0, 1.5):
      call = lambda seed: pipe(clip.rgb, prompt=PROMPT, seed=seed, num_inference_steps=steps,
                               temporal_guidance_scale=temporal, num_frames=args.frames)
      start = time.perf_counter()
      call(0)
      first = time.perf_counter() - start
      runs = [call(seed + 1).timings for seed in range(args.repeats)]
      median = {stage: statistics.median(r[stage] for r in runs) for stage in STAGES}
      copies = 3 if temporal != 1.0 else 2
      counted = forward * copies * steps
      sampling[(steps, temporal)] = median["sampling"]
      label = "CFG" if temporal == 1.0 else f"TG {temporal}"
      print(f"{steps:>5} {label:>9} {first:>13.2f} " + " ".join(f"{median[s]:>9.3f}" for s in STAGES[1:]) +
            f" {sum(median.values()):>8.2f} {counted / median['sampling'] / 1e9:>8.1f}")
    ratio = sampling[(steps, 1.5)] / sampling[(steps, 1.0)]
    print(f"      {steps} steps: temporal guidance / CFG sampling time = {ratio:.2f} (3N / 2N batch: 1.50)")


if __name__ == "__main__":
  main()
