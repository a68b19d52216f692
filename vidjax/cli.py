"""`vidjax` console entry point: a thin dispatcher to subcommands that live in importable modules.

Each subcommand module exposes `main(argv: list[str] | None) -> int`. A `VidjaxError` (bad input or
configuration) prints one line naming the input, the problem and the fix, and exits with
`EXIT_ERROR` (2) without a traceback; batch jobs that skipped bad items exit `EXIT_PARTIAL` (3).
"""

from __future__ import annotations

import importlib
import sys

from vidjax.errors import EXIT_ERROR, VidjaxError

# name -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("vidjax.train.main", "train a model from a config file (resumes in the same workdir)"),
    "edit": ("vidjax.pipelines.edit_cli",
             "edit a video: keep its depth structure, change its content by a prompt or image"),
    "eval-toy-edit": ("vidjax.eval.toy_edit",
                      "score a checkpoint's recolouring edits of held-out toy clips (IoU, colour, consistency)"),
    "evaluate": ("vidjax.pipelines.evaluate",
                 "score a checkpoint on an evaluation protocol (configs/eval/*.py), resumable per item"),
    "convert": ("vidjax.convert.cli", "convert diffusers / HF / Make-Your-Video / PyTorch I3D checkpoints to vidjax"),
    "build-shards": ("data_pipelines.build_shards",
                     "build ArrayRecord video shards (toy world, a video folder with captions, or TFDS)"),
}


def usage() -> str:
  lines = ["usage: vidjax <command> [options]   (vidjax <command> --help for its options)", "", "commands:"]
  lines += [f"  {name:<14} {help_text}" for name, (_, help_text) in COMMANDS.items()]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(usage())
    return 0
  name, rest = argv[0], argv[1:]
  if name not in COMMANDS:
    print(f"vidjax: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
    return EXIT_ERROR
  module = importlib.import_module(COMMANDS[name][0])
  try:
    return int(module.main(rest) or 0)
  except VidjaxError as e:
    print(f"vidjax {name}: error: {e}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
  sys.exit(main())
