"""`vidjax eval-toy-edit`: the toy recolouring benchmark (`vidjax.eval.toy_edit`) on a VideoEditPipeline checkpoint.

A text model gets each scene's caption with the new colours; an image-embedding model (Gen-1) gets a
picture of the recoloured scene instead (`toy_edit.reference_image`).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from vidjax.errors import EXIT_ERROR, VidjaxError, atomic_path
from vidjax.eval import toy_edit


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="vidjax eval-toy-edit", description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkpoint", default=None,
                      help="a VideoEditPipeline checkpoint directory (default: the embedded toy checkpoint)")
  parser.add_argument("--num_clips", type=int, default=20, help="held-out toy scenes to edit (default 20)")
  parser.add_argument("--num_inference_steps", "--steps", type=int, default=25, dest="num_inference_steps",
                      help="DDIM steps (default 25)")
  parser.add_argument("--guidance_scale", type=float, default=None,
                      help="classifier-free guidance (default: the checkpoint's sampling default, else 5)")
  parser.add_argument("--first_seed", type=int, default=1_000_000,
                      help="scenes from this seed on (default 1000000, the benchmark's); another held-out range, "
                      "e.g. 500000, to choose settings without tuning on the benchmark")
  parser.add_argument("--out", default=None, help="also write the report as JSON here")
  return parser


def main(argv: list[str] | None = None) -> int:
  """Edits `--num_clips` held-out toy clips with a checkpoint, prints a table, optionally writes JSON.

  Raises VidjaxError on bad input (the `__main__` block and the CLI turn it into one line, exit 2).
  """
  args = _parser().parse_args(argv)
  from vidjax.pipelines.edit import VideoEditPipeline  # heavy (jax, the model): after argument checks

  cases = toy_edit.edit_cases(args.num_clips, first_seed=args.first_seed)
  pipe = VideoEditPipeline.from_pretrained(args.checkpoint, progress=False)
  guidance = args.guidance_scale
  if guidance is None:
    guidance = pipe.model_dir.sampling_defaults["guidance_scale"]
    print(f"guidance scale {guidance:g} (the checkpoint's sampling default)")

  by_image = pipe.model.config.content == "image"
  if by_image:
    print("content: a reference image per scene (toy_edit.reference_image), as this checkpoint takes CLIP image "
          "embeddings")

  def edit(case: toy_edit.EditCase) -> np.ndarray:
    content = {"image": toy_edit.reference_image(case)} if by_image else {"prompt": case.target_caption}
    result = pipe(depth=case.source.disparity, **content, seed=case.seed,
                  num_inference_steps=args.num_inference_steps, guidance_scale=guidance, temporal_guidance_scale=1.0)
    return np.asarray(result.frames)

  print(f"{'seed':>8}  {'IoU':>5}  {'consist':>7}  {'secs':>6}  colours (wanted: got)")
  report = toy_edit.evaluate(edit, cases, on_row=lambda row: print(toy_edit.format_row(row), flush=True))
  print(toy_edit.summary(report))
  if args.out:
    settings = {"checkpoint": args.checkpoint, "num_clips": args.num_clips,
                "content": "reference image" if by_image else "caption",
                "num_inference_steps": args.num_inference_steps,
                "guidance_scale": guidance, "temporal_guidance_scale": 1.0,
                "seeds": [case.seed for case in cases]}
    with atomic_path(args.out) as tmp, open(tmp, "w") as f:
      json.dump({"settings": settings, **report}, f, indent=1)
    print(f"report written to {args.out}")
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main(sys.argv[1:]))
  except VidjaxError as e:
    print(f"vidjax eval-toy-edit: error: {e}", file=sys.stderr)
    sys.exit(EXIT_ERROR)
