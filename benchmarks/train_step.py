"""Training-step throughput: clips/s, analytic TFLOP per step, achieved GFLOP/s and peak memory.

  python benchmarks/train_step.py [--steps 20]

Two configs:
  * toy: configs/toy.py's model and batch (what the README's main job trains), timed over
    --steps jitted steps after a compiled warm-up (compile time reported apart);
  * Make-Your-Video-sized: configs/make_your_video.py (SD-2-depth UNet + pseudo-3D temporal layers,
    16 frames of 32x32 latents, batch 1). On this CPU machine it is counted, not run: the analytic
    FLOPs of one step and the bytes of params + AdamW state + EMA from `jax.eval_shape` (nothing is
    allocated); with --run_large it also compiles and times one step (needs ~25 GB and minutes).
The FLOP count is vidjax.models.flops (UNet matmuls, 3x the forward for a training step); the VAE
encoder and text tower in the step are not counted, so achieved GFLOP/s is a lower bound. Peak
memory is the process's max RSS on CPU, the device's peak_bytes_in_use on accelerators.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import make_your_video, toy  # noqa: E402
from vidjax import toyworld  # noqa: E402
from vidjax.models import flops  # noqa: E402
from vidjax.parallel import make_mesh  # noqa: E402
from vidjax.parallel import sharding as sharding_lib  # noqa: E402
from vidjax.train import loop  # noqa: E402
from vidjax.train import state as state_lib  # noqa: E402
from vidjax.train.step import make_train_step  # noqa: E402


def _setup(config):
  model = loop.build_model(config)
  rng = jax.random.key(0)
  abstract = jax.eval_shape(model.init, rng)
  labels = state_lib.trainable_labels(abstract, config.train.trainable)
  tx = state_lib.make_optimizer(config.train, labels)
  components = state_lib.ema_components(labels)
  return model, labels, tx, components, rng


def _batch(model, config, clips, frames, size):
  rng = np.random.default_rng(0)
  tokens = np.broadcast_to(np.asarray(model.config.null_tokens, np.int32), (clips, len(model.config.null_tokens)))
  return {"frames": rng.uniform(-1, 1, (clips, frames, size, size, 3)).astype(np.float32),
          "depth": rng.uniform(-1, 1, (clips, frames, size, size, 1)).astype(np.float32),
          "structure_fidelity": np.zeros((clips,), np.int32), "tokens": np.array(tokens)}


def _peak_memory_bytes() -> int:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _step_flops(model, clips, frames, size, context):
  f = model.config.vae.downsample_factor
  return flops.unet_train_flops(model.config.unet, batch=clips, frames=frames, height=size // f, width=size // f,
                                context_length=context)


def time_config(name, config, clips, frames, size, steps):
  model, labels, tx, components, rng = _setup(config)
  mesh = make_mesh({"data": 1}, jax.devices()[:1])
  state, shardings = state_lib.sharded_state(model.init, tx, components, rng, mesh, config.mesh.rules)
  fn = jax.jit(make_train_step(model, tx, labels, config.train), donate_argnums=0, static_argnums=2)
  batch = sharding_lib.global_batch(_batch(model, config, clips, frames, size), mesh)
  start = time.perf_counter()
  state, metrics = fn(state, batch, False)
  jax.block_until_ready(metrics)
  compile_seconds = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = fn(state, batch, False)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / steps
  step_flops = _step_flops(model, clips, frames, size, len(model.config.null_tokens))
  print(f"{name}: batch {clips} clips x {frames} frames of {size}x{size}; compile+first step {compile_seconds:.1f} s; "
        f"{seconds * 1e3:.1f} ms/step, {clips / seconds:.1f} clips/s, {clips * frames / seconds:.1f} frames/s; "
        f"{step_flops / 1e12:.4f} analytic TFLOP/step, {step_flops / seconds / 1e9:.1f} GFLOP/s achieved; "
        f"peak memory {_peak_memory_bytes() / 2**30:.2f} GiB")
  return clips / seconds


def count_config(name, config, clips, frames, size):
  model, labels, tx, components, rng = _setup(config)
  state = jax.eval_shape(lambda key: sharding_lib.unbox(state_lib.create_state(model.init, tx, components, key)), rng)
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))
  params = sum(x.size for x in jax.tree_util.tree_leaves(state.params["unet"]))
  trainable = sum(x.size for x, label in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(labels))
                  if label == "train")
  step_flops = _step_flops(model, clips, frames, size, config.data.max_caption_tokens)
  print(f"{name}: batch {clips} x {frames} frames of {size}x{size} (latents {size // 8}x{size // 8}); UNet "
        f"{params / 1e9:.3f} B params, {trainable / 1e6:.1f} M trainable; {step_flops / 1e12:.2f} analytic TFLOP/step; "
        f"state (params + AdamW + EMA) {nbytes(state) / 2**30:.2f} GiB before activations")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--run_large", action="store_true", help="also compile and time the Make-Your-Video-sized step")
  args = parser.parse_args(argv)
  print(f"devices: {jax.devices()}")
  with tempfile.TemporaryDirectory() as tmp:
    toyworld.save_tokenizer(os.path.join(tmp, "tok"))
    config = toy.get_config()
    config.data.tokenizer_dir = os.path.join(tmp, "tok")
    time_config("toy", config, config.data.batch_size, toy.FRAMES, toy.SIZE, args.steps)
    large = make_your_video.get_config()
    large.data.tokenizer_dir = os.path.join(tmp, "tok")
    count_config("make-your-video", large, 1, make_your_video.FRAMES, 256)
    if args.run_large:
      time_config("make-your-video", large, 1, make_your_video.FRAMES, 256, 1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
