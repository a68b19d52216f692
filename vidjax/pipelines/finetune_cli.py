"""`vidjax finetune`: customization on 15-30 images of a subject (`vidjax.pipelines.finetune` holds the logic)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from vidjax.errors import EXIT_ERROR, VidjaxError


def _parser() -> argparse.ArgumentParser:
  from vidjax.pipelines import finetune  # jax and the model code: after --help has been served

  parser = argparse.ArgumentParser(prog="vidjax finetune", description=__doc__.split("(")[0].strip())
  parser.add_argument("--checkpoint", required=True, help="the base model directory (e.g. vidjax/assets/toy)")
  parser.add_argument("--images", required=True, help="a folder of the subject's images (+ optional "
                      "<stem>.txt captions and <stem>.depth.npy depth)")
  parser.add_argument("--token", required=True, help="the new word naming the subject, e.g. sks")
  parser.add_argument("--out", required=True, help="the output folder (LoRA files, or a whole model for --mode full)")
  parser.add_argument("--workdir", default=None, help="checkpoints for resuming (default OUT.finetune-work)")
  defaults = finetune.FinetuneSettings(token="x")
  for field in dataclasses.fields(finetune.FinetuneSettings):
    if field.name == "token":
      continue
    default = getattr(defaults, field.name)
    kind = float if field.name == "lr" else type(default)
    flags = (f"--{field.name}", "--steps") if field.name == "num_steps" else (f"--{field.name}",)
    parser.add_argument(*flags, type=kind, default=default, dest=field.name, help=f"(default {default})")
  return parser


def main(argv: list[str] | None = None) -> int:
  """Parses the flags into FinetuneSettings and runs `finetune`; a VidjaxError exits 2 (the CLI's rule)."""
  from vidjax.pipelines import finetune

  args = vars(_parser().parse_args(argv))
  paths = {name: args.pop(name) for name in ("checkpoint", "images", "out", "workdir")}
  settings = finetune.FinetuneSettings(**args)
  finetune.finetune(settings, paths["checkpoint"], paths["images"], paths["out"], workdir=paths["workdir"])
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main(sys.argv[1:]))
  except VidjaxError as e:
    print(f"vidjax finetune: error: {e}", file=sys.stderr)
    sys.exit(EXIT_ERROR)
