"""`vidjax` console entry point: a thin dispatcher to subcommands that live in importable modules.

Each subcommand is a `main(argv: list[str] | None) -> int` ("module" for its `main`, or "module:function").
The top of the layer order (tests/test_layers.py): it may compose commands from several layers, as
`vidjax convert`, whose converters live in `vidjax.convert` and whose `run` (exporting a training run)
in `vidjax.train.export`. A `VidjaxError` (bad input or
configuration) prints one line naming the input, the problem and the fix, and exits with
`EXIT_ERROR` (2) without a traceback; batch jobs that skipped bad items exit `EXIT_PARTIAL` (3).
"""

from __future__ import annotations

import importlib
import os
import sys

import vidjax
from vidjax.errors import EXIT_ERROR, ConfigError, VidjaxError

# name -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("vidjax.train.main", "train a model from a config file (resumes in the same workdir)"),
    "edit": ("vidjax.pipelines.edit_cli",
             "edit a video: keep its depth structure, change its content by a prompt or image"),
    "eval-toy-edit": ("vidjax.pipelines.toy_edit_cli",
                      "score a checkpoint's recolouring edits of held-out toy clips (IoU, colour, consistency)"),
    "fidelity": ("vidjax.pipelines.fidelity_cli",
                 "the papers' controls (omega_t, t_s, the causal window, temporal layers) as curves on toy scenes"),
    "evaluate": ("vidjax.pipelines.evaluate",
                 "score a checkpoint on an evaluation protocol (configs/eval/*.py), resumable per item"),
    "finetune": ("vidjax.pipelines.finetune_cli",
                 "customize a model on 15-30 images of a subject named by a new token (LoRA or full)"),
    "convert": ("vidjax.cli:convert", "convert diffusers / HF / Make-Your-Video / PyTorch I3D checkpoints to vidjax"),
    "build-shards": ("vidjax.cli:build_shards",
                     "build ArrayRecord video shards (toy world, a video folder with captions, or TFDS)"),
}


def convert(argv: list[str] | None = None) -> int:
  """`vidjax convert`: the converters of `vidjax.convert.cli` plus `run` from `vidjax.train.export`."""
  from vidjax.convert import cli as convert_cli
  from vidjax.train import export

  return convert_cli.main(argv, extra=(export.add_run_command,))


def build_shards(argv: list[str] | None = None) -> int:
  """`vidjax build-shards`: the offline job data_pipelines/build_shards.py, found by path (it is not
  installed): in the current folder, else in the checkout this vidjax runs from."""
  for root in (os.getcwd(), os.path.dirname(os.path.dirname(os.path.abspath(vidjax.__file__)))):
    if os.path.isfile(os.path.join(root, "data_pipelines", "build_shards.py")):
      if root not in sys.path:
        sys.path.insert(0, root)
      return importlib.import_module("data_pipelines.build_shards").main(argv)
  raise ConfigError("vidjax build-shards", "data_pipelines/build_shards.py is not in this folder nor beside vidjax",
                    "run it from a vidjax checkout (the offline jobs are not installed with the package)")


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
  module_name, _, function = COMMANDS[name][0].partition(":")
  run = getattr(importlib.import_module(module_name), function or "main")
  try:
    return int(run(rest) or 0)
  except VidjaxError as e:
    print(f"vidjax {name}: error: {e}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
  sys.exit(main())
