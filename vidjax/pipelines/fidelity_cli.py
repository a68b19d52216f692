"""`vidjax fidelity`: the papers' controls as curves on held-out toy scenes (`vidjax.pipelines.fidelity`).

  vidjax fidelity --out runs/fidelity                      # all four, on the shipped toy checkpoints
  vidjax fidelity --checkpoint DIR --out DIR --claims temporal_guidance,temporal_layers

Without --checkpoint each claim runs on the shipped checkpoint made for it: the embedded toy
checkpoint (temporal guidance, the causal window, temporal layers) and vidjax/assets/toy_fidelity
(structure fidelity, trained over t_s 0..7). With one, every claim it can show (or --claims).
Writes <out>/fidelity.json (every point, per-scene values included; rewritten after each claim, so
an interrupted run keeps the claims it finished) and <out>/<claim>.png.
"""

from __future__ import annotations

import argparse
import os
import sys

from vidjax import toyworld
from vidjax.errors import EXIT_ERROR, InputError, VidjaxError, write_json
from vidjax.eval import fidelity_plots
from vidjax.pipelines import fidelity
from vidjax.pipelines.edit import VideoEditPipeline

# The shipped checkpoint each claim runs on when no --checkpoint is given.
SHIPPED = {"temporal_guidance": toyworld.CHECKPOINT, "structure_fidelity": toyworld.FIDELITY_CHECKPOINT,
           "temporal_window": toyworld.CHECKPOINT, "temporal_layers": toyworld.CHECKPOINT}


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="vidjax fidelity", description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="folder for fidelity.json and one PNG per claim")
  parser.add_argument("--checkpoint", default=None,
                      help="a VideoEditPipeline checkpoint (default: each claim on its shipped toy checkpoint)")
  parser.add_argument("--claims", default=None,
                      help=f"comma-separated, from {','.join(fidelity.CLAIMS)} (default: all the checkpoint can show)")
  defaults = fidelity.FidelitySettings()
  parser.add_argument("--num_clips", type=int, default=defaults.num_clips,
                      help=f"held-out toy scenes per point (default {defaults.num_clips})")
  parser.add_argument("--first_seed", type=int, default=defaults.first_seed,
                      help=f"scenes from this seed on (default {defaults.first_seed}, the benchmark's)")
  parser.add_argument("--num_inference_steps", type=int, default=defaults.num_inference_steps,
                      help=f"DDIM steps (default {defaults.num_inference_steps})")
  parser.add_argument("--guidance_scale", type=float, default=None,
                      help="classifier-free guidance (default: the checkpoint's sampling default)")
  parser.add_argument("--long_clip_factor", type=int, default=defaults.long_clip_factor,
                      help=f"long clips' length over the trained length (default {defaults.long_clip_factor})")
  return parser


def main(argv: list[str] | None = None) -> int:
  """Runs the claims, prints each point as it is measured, writes the JSON and the plots."""
  args = _parser().parse_args(argv)
  settings = fidelity.FidelitySettings(num_clips=args.num_clips, first_seed=args.first_seed,
                                       num_inference_steps=args.num_inference_steps,
                                       guidance_scale=args.guidance_scale, long_clip_factor=args.long_clip_factor)
  settings.check()
  claims = _claims(args.claims)
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    raise InputError("--out", f"{args.out} is a file", "pass a folder (it is created if missing)")
  pipes: dict[str, VideoEditPipeline] = {}

  def pipe_for(claim: str) -> VideoEditPipeline:
    path = args.checkpoint or SHIPPED[claim]
    if path not in pipes:
      pipes[path] = VideoEditPipeline.from_pretrained(path, progress=False)
    return pipes[path]

  if claims is None:
    claims = fidelity.CLAIMS if args.checkpoint is None else fidelity.supported_claims(pipe_for(fidelity.CLAIMS[0]))
  for claim in claims:  # every checkpoint can show what is asked before anything runs
    fidelity.check_claim(pipe_for(claim), claim)
  records = {}
  for claim in claims:
    print(f"{claim}: {fidelity.EXPECTED[claim]}", flush=True)
    records[claim] = fidelity.run_claim(pipe_for(claim), claim, settings, on_point=_print_point)
    write_json(os.path.join(args.out, "fidelity.json"), {"claims": records})
    fidelity_plots.plot_claim(records[claim], os.path.join(args.out, f"{claim}.png"))
  print(f"wrote {os.path.join(args.out, 'fidelity.json')} and {len(records)} plots")
  return 0


def _claims(text: str | None) -> tuple[str, ...] | None:
  if text is None:
    return None
  names = tuple(name.strip() for name in text.split(",") if name.strip())
  unknown = [name for name in names if name not in fidelity.CLAIMS]
  if unknown or not names:
    raise InputError("--claims", f"{text!r} names {unknown or 'nothing'}", f"pick from {','.join(fidelity.CLAIMS)}")
  return names


def _print_point(point: dict) -> None:
  figures = "  ".join(f"{name} {m['mean']:.3f} +- {m['error']:.3f}" for name, m in point["metrics"].items())
  print(f"  {point['label']:<34} {figures}", flush=True)


if __name__ == "__main__":
  try:
    sys.exit(main(sys.argv[1:]))
  except VidjaxError as e:
    print(f"vidjax fidelity: error: {e}", file=sys.stderr)
    sys.exit(EXIT_ERROR)
