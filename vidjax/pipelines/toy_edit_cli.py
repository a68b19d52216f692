"""`vidjax eval-toy-edit`: the toy recolouring benchmark (`vidjax.eval.toy_edit`) on a VideoEditPipeline checkpoint.

A text model gets each scene's caption with the new colours; an image-embedding model (Gen-1) gets a
picture of the recoloured scene instead (`toy_edit.reference_image`), or, when its checkpoint holds
Gen-1's prior, that caption through the prior (`--content prior`, the default for such a checkpoint).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from vidjax.errors import EXIT_ERROR, ConfigError, InputError, VidjaxError, write_json
from vidjax.eval import toy_edit

CONTENT_CHOICES = ("reference_image", "prior")
# The `content` entry of the report's settings, per content kind.
CONTENT_NAMES = {"caption": "caption", "reference_image": "reference image", "prior": "prior from caption"}


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
  parser.add_argument("--content", choices=CONTENT_CHOICES, default=None,
                      help="for image-embedding models: a reference image per scene, or the target caption through "
                      "the checkpoint's prior (default: prior when the checkpoint has one, else reference_image)")
  parser.add_argument("--prior_guidance_scale", type=float, default=None,
                      help="the prior's guidance (default: the checkpoint's sampling default, else 1)")
  parser.add_argument("--prior_num_inference_steps", type=int, default=None,
                      help="the prior's DDIM steps (default: the checkpoint's sampling default, else 64)")
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

  content = _content_kind(pipe, args.content)
  defaults = pipe.model_dir.sampling_defaults
  prior = {}
  if content == "prior":
    prior = {name: defaults[name] if getattr(args, name) is None else getattr(args, name)
             for name in ("prior_guidance_scale", "prior_num_inference_steps")}
    print(f"content: each scene's target caption through the checkpoint's prior (guidance "
          f"{prior['prior_guidance_scale']:g}, {prior['prior_num_inference_steps']} steps)")
  elif content == "reference_image":
    print("content: a reference image per scene (toy_edit.reference_image), as this checkpoint takes CLIP image "
          "embeddings")

  def edit(case: toy_edit.EditCase) -> np.ndarray:
    given = {"image": toy_edit.reference_image(case)} if content == "reference_image" else {
        "prompt": case.target_caption}
    result = pipe(depth=case.source.disparity, **given, **prior, seed=case.seed,
                  num_inference_steps=args.num_inference_steps, guidance_scale=guidance, temporal_guidance_scale=1.0)
    return np.asarray(result.frames)

  print(f"{'seed':>8}  {'IoU':>5}  {'consist':>7}  {'secs':>6}  colours (wanted: got)")
  report = toy_edit.evaluate(edit, cases, on_row=lambda row: print(toy_edit.format_row(row), flush=True))
  print(toy_edit.summary(report))
  if args.out:
    settings = {"checkpoint": args.checkpoint, "num_clips": args.num_clips,
                "content": CONTENT_NAMES[content], **prior, "num_inference_steps": args.num_inference_steps,
                "guidance_scale": guidance, "temporal_guidance_scale": 1.0,
                "seeds": [case.seed for case in cases]}
    write_json(args.out, {"settings": settings, **report})
    print(f"report written to {args.out}")
  return 0


def _content_kind(pipe, requested: str | None) -> str:
  """'caption' (text models), 'reference_image' or 'prior' (image models); --content checked against the model."""
  if pipe.model.config.content == "text":
    if requested is not None:
      raise InputError("--content", f"{requested} applies to image-embedding models; this checkpoint takes captions",
                       "drop --content")
    return "caption"
  has_prior = pipe.model_dir.prior is not None
  if requested == "prior" and not has_prior:
    raise ConfigError("--content prior", f"the checkpoint {pipe.model_dir.path} holds no prior",
                      "export it with its prior (vidjax convert run WORKDIR OUT --prior PRIOR_WORKDIR), or pass "
                      "--content reference_image")
  return requested or ("prior" if has_prior else "reference_image")


if __name__ == "__main__":
  try:
    sys.exit(main(sys.argv[1:]))
  except VidjaxError as e:
    print(f"vidjax eval-toy-edit: error: {e}", file=sys.stderr)
    sys.exit(EXIT_ERROR)
