"""Where benchmarks/unet_cpu.py's time goes: each convolution and matmul of our UNet, XLA against torch.

  python benchmarks/unet_cpu_ops.py                  # unet_cpu.py's default config
  python benchmarks/unet_cpu_ops.py --top 12 --repeats 9

Traces our jitted image-mode VideoUNet (unet_cpu.py's config, random weights) and collects every
`conv_general_dilated` and `dot_general` in its forward jaxpr, with how often each shape occurs. Each
distinct op is then timed alone, in one run and alternating as unet_cpu.py does:
  * XLA: the op jitted by itself, forward, and forward+backward (`jax.vjp` to both operands, as
    the UNet's backward needs the input and the weight gradient);
  * torch: the same op at the same shape (`conv2d` in NCHW, `einsum` for matmuls) under no_grad,
    and with `backward()` to both operands.
Summed over the UNet's op counts this is the time the library calls alone would take in each
framework, and set beside the whole UNet's time (timed in the same run) it shows how much of ours
is the matmul-like work and how much the rest (elementwise, layout, norm, softmax). The whole-UNet
ratio cannot pass the library calls' ratio by more than what the rest costs: the table says which
XLA limit stops unet_cpu.py's ratio.
Each op timed alone also pays one dispatch (tens of microseconds for a jitted call, a few for
torch): at small configs that dominates and the sums exceed the whole UNet's time, so read the
table at the default config or larger.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch

from unet_cpu import add_config_args, diffusers_config, median_seconds, unet_inputs, xla_compute_threads
from vidjax.convert.diffusers_unet import init_unet_params
from vidjax.models.unet import UNetConfig, VideoUNet

OPS = (jax.lax.conv_general_dilated_p, jax.lax.dot_general_p)


def collect_ops(jaxpr, ops: dict) -> None:
  """Adds every conv and matmul of `jaxpr` and its sub-jaxprs to `ops`: (name, operand shapes, params
  as text) -> [count, params]; (name, shapes) is the key when no two ops of one shape differ in params."""
  for eqn in jaxpr.eqns:
    if eqn.primitive in OPS:
      shapes = tuple(tuple(v.aval.shape) for v in eqn.invars)
      entry = ops.setdefault((eqn.primitive.name, shapes, repr(sorted(eqn.params.items(), key=str))), [0, eqn.params])
      entry[0] += 1
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          collect_ops(sub.jaxpr, ops)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          collect_ops(sub, ops)


def torch_op(name: str, shapes, params):
  """A torch callable (a, b) -> out computing the same op as XLA's `name` with `params`."""
  if name == "dot_general":
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    lhs, rhs = [next(letters) for _ in shapes[0]], [None] * len(shapes[1])
    for i, j in zip(lc, rc):
      rhs[j] = lhs[i]
    for i, j in zip(lb, rb):
      rhs[j] = lhs[i]
    rhs = [r or next(letters) for r in rhs]
    out = [lhs[i] for i in lb] + [c for i, c in enumerate(lhs) if i not in lc and i not in lb]
    out += [c for j, c in enumerate(rhs) if j not in rc and j not in rb]
    spec = f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}"
    return lambda a, b: torch.einsum(spec, a, b)
  # Our convs are NHWC x HWIO; torch's are NCHW x OIHW with symmetric padding (asymmetric pads first).
  numbers = params["dimension_numbers"]
  assert (numbers.lhs_spec, numbers.rhs_spec) == ((0, 3, 1, 2), (3, 2, 0, 1)), numbers
  (top, bottom), (left, right) = params["padding"]
  stride = params["window_strides"]

  def conv(a, b):
    a = torch.nn.functional.pad(a, (left, right, top, bottom)) if (top, left) != (bottom, right) else a
    pad = 0 if (top, left) != (bottom, right) else (top, left)
    return torch.nn.functional.conv2d(a, b, stride=stride, padding=pad)

  return conv


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  add_config_args(parser)
  parser.add_argument("--top", type=int, default=10, help="rows of the per-op table (heaviest first)")
  args = parser.parse_args()
  load_at_start = os.getloadavg()[0]
  channels = tuple(int(c) for c in args.channels.split(","))
  config = UNetConfig.from_diffusers(diffusers_config(channels, args.latent, args.layers, args.context_dim))
  model = VideoUNet(config)
  rng = np.random.default_rng(1)  # operands of the ops timed alone
  b, s = args.batch, args.latent
  latents, timesteps, context, target = unet_inputs(args)
  params = jax.device_put(init_unet_params(config))
  apply = lambda p: model.apply({"params": p}, latents, timesteps, context)
  forward = jax.jit(apply)
  train = jax.jit(jax.grad(lambda p: jnp.mean((apply(p) - target) ** 2)))

  ops: dict = {}
  collect_ops(jax.make_jaxpr(apply)(params).jaxpr, ops)
  forward(params).block_until_ready()  # XLA's compute pool exists once a jitted call has run
  threads = xla_compute_threads()
  torch.set_num_threads(threads)

  rows = []
  for (name, shapes, _), (count, op_params) in ops.items():
    primitive = dict((p.name, p) for p in OPS)[name]
    a, b_ = (rng.standard_normal(shape).astype(np.float32) for shape in shapes)
    xla_fwd = jax.jit(lambda x, y: primitive.bind(x, y, **op_params))
    out = xla_fwd(a, b_)
    cotangent = rng.standard_normal(out.shape).astype(np.float32)
    xla_train = jax.jit(lambda x, y, g: jax.vjp(lambda u, v: primitive.bind(u, v, **op_params), x, y)[1](g))
    if name == "conv_general_dilated":  # NHWC x HWIO -> NCHW x OIHW
      ta, tb = torch.from_numpy(np.moveaxis(a, -1, 1).copy()), torch.from_numpy(np.transpose(b_, (3, 2, 0, 1)).copy())
      tg = torch.from_numpy(np.moveaxis(cotangent, -1, 1).copy())
    else:
      ta, tb, tg = torch.from_numpy(a), torch.from_numpy(b_), torch.from_numpy(cotangent)
    op = torch_op(name, shapes, op_params)
    ours_out = np.asarray(out)
    theirs_out = op(ta, tb).numpy()
    if name == "conv_general_dilated":
      theirs_out = np.moveaxis(theirs_out, 1, -1)
    assert np.allclose(ours_out, theirs_out, atol=1e-3 * max(1.0, np.abs(ours_out).max())), (name, shapes)
    ta_g, tb_g = ta.clone().requires_grad_(), tb.clone().requires_grad_()

    def torch_fwd():
      with torch.no_grad():
        return op(ta, tb)

    def torch_train():
      ta_g.grad = tb_g.grad = None
      op(ta_g, tb_g).backward(tg)

    times = median_seconds({"xla_fwd": lambda: xla_fwd(a, b_).block_until_ready(), "torch_fwd": torch_fwd,
                            "xla_train": lambda: jax.block_until_ready(xla_train(a, b_, cotangent)),
                            "torch_train": torch_train}, args.repeats)
    flops = 2 * np.prod(out.shape) * (np.prod(shapes[1]) // out.shape[-1])
    rows.append(dict(name=name, shapes=shapes, count=count, gflop=count * flops / 1e9,
                     **{k: count * v[0] for k, v in times.items()}))

  whole = median_seconds({"forward": lambda: forward(params).block_until_ready(),
                          "train": lambda: jax.block_until_ready(train(params))}, args.repeats)
  print(f"jax {jax.__version__}, torch {torch.__version__}: {threads} threads each; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; load average at start {load_at_start:.2f}, "
        f"at end {os.getloadavg()[0]:.2f}")
  print(f"config: channels {channels}, {args.layers} layers/block, latent {s}x{s}, batch {b}, context {args.context}; "
        f"{sum(c for c, _ in ops.values())} convs and matmuls in {len(ops)} shapes; median of {args.repeats}")
  rows.sort(key=lambda r: -r["xla_train"])
  print(f"{'op':<6} {'operand shapes':<34} {'n':>3} {'GFLOP':>6} | {'fwd ms xla':>10} {'torch':>7} {'ratio':>5} | "
        f"{'fwd+bwd ms xla':>14} {'torch':>7} {'ratio':>5}")
  for r in rows[:args.top]:
    shapes = " x ".join("(" + ",".join(map(str, s)) + ")" for s in r["shapes"])
    print(f"{'conv' if r['name'].startswith('conv') else 'matmul':<6} {shapes:<34} {r['count']:>3} {r['gflop']:6.2f} | "
          f"{1e3 * r['xla_fwd']:10.1f} {1e3 * r['torch_fwd']:7.1f} {r['torch_fwd'] / r['xla_fwd']:5.2f} | "
          f"{1e3 * r['xla_train']:14.1f} {1e3 * r['torch_train']:7.1f} {r['torch_train'] / r['xla_train']:5.2f}")
  for kind in ("conv", "dot", ""):
    chosen = [r for r in rows if r["name"].startswith(kind)]
    total = {k: sum(r[k] for r in chosen) for k in ("xla_fwd", "torch_fwd", "xla_train", "torch_train", "gflop")}
    label = {"conv": "all convs", "dot": "all matmuls", "": "convs + matmuls"}[kind]
    print(f"{label:<45} {total['gflop']:6.2f} | {1e3 * total['xla_fwd']:10.1f} {1e3 * total['torch_fwd']:7.1f} "
          f"{total['torch_fwd'] / total['xla_fwd']:5.2f} | {1e3 * total['xla_train']:14.1f} "
          f"{1e3 * total['torch_train']:7.1f} {total['torch_train'] / total['xla_train']:5.2f}")
  print(f"our whole UNet: forward {1e3 * whole['forward'][0]:.1f} ms ({100 * total['xla_fwd'] / whole['forward'][0]:.0f} % "
        f"of it in the ops above, timed alone), forward+backward {1e3 * whole['train'][0]:.1f} ms "
        f"({100 * total['xla_train'] / whole['train'][0]:.0f} %)")


if __name__ == "__main__":
  main()
