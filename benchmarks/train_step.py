"""Training-step throughput: clips/s, TFLOP per step, achieved GFLOP/s against this CPU's GEMM rate, peak memory.

  python benchmarks/train_step.py [--steps 20]

Two configs:
  * toy: configs/toy.py's model and batch (what the README's main job trains), timed over
    --steps jitted steps after a compiled warm-up (compile time reported apart);
  * Make-Your-Video-sized: configs/make_your_video.py (SD-2-depth UNet + pseudo-3D temporal layers,
    16 frames of 32x32 latents, batch 1). On this CPU machine it is counted, not run: the analytic
    FLOPs of one step and the bytes of params + AdamW state + EMA from `jax.eval_shape` (nothing is
    allocated); with --run_large it also compiles and times one step (needs ~25 GB and minutes).
Two FLOP counts of the toy step: the model count, vidjax.models.flops (UNet matmuls, 3x the forward
for a training step; the VAE encoder and text tower in the step are not counted, so its GFLOP/s is a
lower bound), and XLA's `cost_analysis()` of the whole compiled step (every dot and conv of the VAE,
text tower and UNet plus one FLOP per elementwise op, optimizer included). Both are set against the
limit measured in the same run: the float32 GEMM rate of a (2048, 2048) matmul with numpy and with
XLA (best of 5), printed as a fraction of the faster of the two. Peak memory is the process's max
RSS on CPU, the device's peak_bytes_in_use on accelerators.
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
from timing import gemm_gflops, machine_line  # noqa: E402
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
  return model, labels, tx, rng


def make_batch(model, config, clips, frames, size, cached_latents=False):
  """A random loader-like batch of `clips` clips of `frames` frames at size x size pixels.

  cached_latents: the batch carries VAE latents (as shards with cached latents do) in place of
  frames, so the step runs no VAE encoder.
  """
  rng = np.random.default_rng(0)
  tokens = np.broadcast_to(np.asarray(model.config.null_tokens, np.int32), (clips, len(model.config.null_tokens)))
  batch = {"depth": rng.uniform(-1, 1, (clips, frames, size, size, 1)).astype(np.float32),
           "structure_fidelity": np.zeros((clips,), np.int32), "tokens": np.array(tokens)}
  if cached_latents:
    f, c = model.config.vae.downsample_factor, model.config.vae.latent_channels
    batch["latents"] = rng.standard_normal((clips, frames, size // f, size // f, c)).astype(np.float32)
  else:
    batch["frames"] = rng.uniform(-1, 1, (clips, frames, size, size, 3)).astype(np.float32)
  if config.train.object_loss_weight:  # the toy config weighs object pixels up: its shards carry masks
    batch["object_mask"] = (rng.uniform(size=(clips, frames, size, size, 1)) < 0.1).astype(np.float32)
  return batch


def peak_memory_bytes() -> int:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def xla_flops(compiled) -> float:
  """XLA's cost_analysis() FLOPs of a compiled program (NaN where the backend gives none)."""
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float((analysis or {}).get("flops", float("nan")))


def step_flops(model, clips, frames, size, context):
  """The model count of one train step: vidjax.models.flops' UNet matmuls, 3x the forward."""
  f = model.config.vae.downsample_factor
  return flops.unet_train_flops(model.config.unet, batch=clips, frames=frames, height=size // f, width=size // f,
                                context_length=context)


def compile_step(config, clips, frames, size, cached_latents=False):
  """The repo's train step (vidjax.train.step) for `config` on one device, compiled for a random batch.

  Returns (compiled step: (state, batch) -> (state, metrics), state, batch, model).
  """
  model, labels, tx, rng = _setup(config)
  mesh = make_mesh({"data": 1}, jax.devices()[:1])
  state, _ = state_lib.sharded_state(model.init, tx, labels, rng, mesh, config.mesh.rules)
  batch = sharding_lib.global_batch(make_batch(model, config, clips, frames, size, cached_latents), mesh)
  fn = jax.jit(make_train_step(model, tx, labels, config.train), donate_argnums=0,
               static_argnums=2).lower(state, batch, False).compile()
  return fn, state, batch, model


def time_steps(fn, state, batch, steps):
  """(seconds per step over `steps` steps after one warm-up step, final state)."""
  state, metrics = fn(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = fn(state, batch)
  jax.block_until_ready(metrics)
  return (time.perf_counter() - start) / steps, state


def time_config(name, config, clips, frames, size, steps, gemm=None):
  """Times `steps` train steps after a compiled warm-up; with `gemm` ({'numpy': GFLOP/s, 'xla': ...}) also
  prints both FLOP counts' GFLOP/s as fractions of the faster GEMM rate. Returns clips/s."""
  start = time.perf_counter()
  fn, state, batch, model = compile_step(config, clips, frames, size)
  compile_seconds = time.perf_counter() - start
  seconds, _ = time_steps(fn, state, batch, steps)
  counts = (("model count (UNet matmuls, vidjax.models.flops)", step_flops(model, clips, frames, size,
                                                                           len(model.config.null_tokens))),
            ("XLA cost_analysis (whole step, incl. elementwise)", xla_flops(fn)))
  print(f"{name}: batch {clips} clips x {frames} frames of {size}x{size}; init+compile {compile_seconds:.1f} s; "
        f"{seconds * 1e3:.1f} ms/step, {clips / seconds:.1f} clips/s, {clips * frames / seconds:.1f} frames/s; "
        f"peak memory {peak_memory_bytes() / 2**30:.2f} GiB")
  limit = max(gemm.values()) if gemm else None
  if gemm:
    print(f"{name}: GEMM limit (float32 2048^3, best of 5) numpy {gemm['numpy']:.1f} GFLOP/s, XLA {gemm['xla']:.1f} "
          f"GFLOP/s -> limit {limit:.1f} GFLOP/s")
  for label, count in counts:
    achieved = count / seconds / 1e9
    fraction = f", {achieved / limit:.1%} of the GEMM limit" if gemm else ""
    print(f"{name}:   {label}: {count / 1e12:.4f} TFLOP/step, {achieved:.1f} GFLOP/s{fraction}")
  return clips / seconds


def count_config(name, config, clips, frames, size):
  model, labels, tx, rng = _setup(config)
  state = jax.eval_shape(lambda key: sharding_lib.unbox(state_lib.create_state(model.init, tx, labels, key)), rng)
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))
  params = sum(x.size for x in jax.tree_util.tree_leaves(state.params["unet"]))
  trainable = sum(x.size for x, label in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(labels))
                  if label == "train")
  count = step_flops(model, clips, frames, size, config.data.max_caption_tokens)
  print(f"{name}: batch {clips} x {frames} frames of {size}x{size} (latents {size // 8}x{size // 8}); UNet "
        f"{params / 1e9:.3f} B params, {trainable / 1e6:.1f} M trainable; {count / 1e12:.2f} analytic TFLOP/step; "
        f"state (params + AdamW + EMA) {nbytes(state) / 2**30:.2f} GiB before activations")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--run_large", action="store_true", help="also compile and time the Make-Your-Video-sized step")
  args = parser.parse_args(argv)
  print(machine_line())
  print(f"devices: {jax.devices()}")
  gemm = gemm_gflops()
  with tempfile.TemporaryDirectory() as tmp:
    toyworld.save_tokenizer(os.path.join(tmp, "tok"))
    config = toy.get_config()
    config.data.tokenizer_dir = os.path.join(tmp, "tok")
    time_config("toy", config, config.data.batch_size, toy.FRAMES, toy.SIZE, args.steps, gemm)
    large = make_your_video.get_config()
    large.data.tokenizer_dir = os.path.join(tmp, "tok")
    count_config("make-your-video", large, 1, make_your_video.FRAMES, 256)
    if args.run_large:
      time_config("make-your-video", large, 1, make_your_video.FRAMES, 256, 1)
  print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
