"""`vidjax convert`: pretrained checkpoints -> vidjax checkpoint directories (`pretrained.py`).

  vidjax convert sd2-depth SRC OUT [--temporal make-your-video]   a diffusers stable-diffusion-2-depth folder
  vidjax convert make-your-video CKPT OUT [--tokenizer DIR] [--depth-estimator DIR]   MYV's model.ckpt
  vidjax convert unet|vae|clip|dpt SRC OUT                         one diffusers / transformers folder
  vidjax convert i3d SRC OUT                                      PyTorch InceptionI3d weights (FVD/KVD features)
  vidjax convert run WORKDIR OUT [--dtype float16] [--no-ema]     a `vidjax train` run (its latest step)
      [--sampling-default guidance_scale=2 ...]                   with the settings it samples best with

Each command writes OUT atomically and prints, per component, how many tensors were converted,
how many params were left at their init (e.g. new temporal layers) and which source keys went
unused. Exit status 0 on success; 2 (`EXIT_ERROR`) on bad input, with a one-line message and
nothing written.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from vidjax.convert import common, pretrained
from vidjax.convert.diffusers_unet import convert_unet
from vidjax.convert.diffusers_vae import convert_vae
from vidjax.convert.hf_clip import load_clip
from vidjax.convert.hf_dpt import convert_dpt
from vidjax.convert.i3d import load_i3d
from vidjax.convert.make_your_video import convert_make_your_video
from vidjax.convert.sd2_depth import TEMPORAL_PRESETS, convert_sd2_depth
from vidjax.errors import EXIT_ERROR, EXIT_OK, InputError, VidjaxError

_SHOWN = 5  # names listed per category in the summary


def _source(kind: str, path: str) -> dict[str, dict[str, str]]:
  return {"source": {"kind": kind, "path": os.path.abspath(path)}}


def _sd2_depth(args) -> dict[str, common.ConversionReport]:
  return convert_sd2_depth(args.src, args.out, unet_overrides=TEMPORAL_PRESETS[args.temporal], seed=args.seed)


def _make_your_video(args) -> dict[str, common.ConversionReport]:
  return convert_make_your_video(args.src, args.out, tokenizer=args.tokenizer, depth_estimator=args.depth_estimator,
                                 channel_mult=args.channel_mult, num_res_blocks=args.num_res_blocks,
                                 attention_resolutions=args.attention_resolutions)


def _save_one(args, name: str, kind: str, converted) -> dict[str, common.ConversionReport]:
  """Writes one converted component, `(config, params, report)`, as OUT; returns {name: report}."""
  config, params, report = converted
  pretrained.save_pretrained(args.out, {name: (config, params)}, extra=_source(kind, args.src))
  return {name: report}


def _unet(args) -> dict[str, common.ConversionReport]:
  return _save_one(args, "unet", "diffusers-unet",
                   convert_unet(args.src, seed=args.seed, **TEMPORAL_PRESETS[args.temporal]))


def _vae(args) -> dict[str, common.ConversionReport]:
  return _save_one(args, "vae", "diffusers-vae", convert_vae(args.src))


def _clip(args) -> dict[str, common.ConversionReport]:
  """A CLIP folder -> text_encoder and/or image_encoder components (one tower each)."""
  config, params, report = load_clip(args.src)
  components = {}
  if config.text is not None:
    components["text_encoder"] = (config.text, params["text_model"])
  if config.vision is not None:
    components["image_encoder"] = (config.vision, params["vision_model"])
  pretrained.save_pretrained(args.out, components, extra=_source("hf-clip", args.src))
  return {"+".join(components): report}


def _dpt(args) -> dict[str, common.ConversionReport]:
  return _save_one(args, "depth_estimator", "hf-dpt", convert_dpt(args.src))


def _i3d(args) -> dict[str, common.ConversionReport]:
  return _save_one(args, "i3d", "pytorch-i3d", load_i3d(args.src))


def _ints(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(v) for v in text.split(","))
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from e


def build_parser(extra: Sequence[Callable[[Callable[..., argparse.ArgumentParser]], None]] = ()
                 ) -> argparse.ArgumentParser:
  """The `vidjax convert` parser; each of `extra` adds a command through the `command` factory it is given
  (`vidjax.cli` adds `run` from `vidjax.train.export`: exporting a run is training's code)."""
  parser = argparse.ArgumentParser(prog="vidjax convert", description=__doc__.split("\n\n")[0])
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  def command(name: str, run: Callable, help_text: str, src_help: str) -> argparse.ArgumentParser:
    sub = commands.add_parser(name, help=help_text, description=help_text)
    sub.add_argument("src", help=src_help)
    sub.add_argument("out", help="the vidjax checkpoint directory to write")
    sub.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (only once all succeeded)")
    sub.set_defaults(run=run)
    return sub

  temporal_help = "temporal layers to add around the image weights (left at their zero-output init)"
  sd2 = command("sd2-depth", _sd2_depth, "convert a diffusers stable-diffusion-2-depth folder",
                "the pipeline folder (model_index.json, unet/, vae/, text_encoder/, ...)")
  unet = command("unet", _unet, "convert a diffusers UNet2DConditionModel folder", "the unet/ folder")
  for sub in (sd2, unet):
    sub.add_argument("--temporal", choices=("none", "make-your-video"), default="none", help=temporal_help)
    sub.add_argument("--seed", type=int, default=0, help="init seed of the temporal layers")
  myv = command("make-your-video", _make_your_video, "convert the Make-Your-Video Lightning checkpoint",
                "model.ckpt")
  myv.add_argument("--tokenizer", help="a CLIP tokenizer folder to bundle (e.g. stable-diffusion-2-depth/tokenizer)")
  myv.add_argument("--depth-estimator", help="a transformers DPT folder to bundle (Intel/dpt-hybrid-midas)")
  myv.add_argument("--channel-mult", type=_ints, default=(1, 2, 4, 4), help="LVDM channel_mult (default 1,2,4,4)")
  myv.add_argument("--num-res-blocks", type=int, default=2, help="LVDM num_res_blocks (default 2)")
  myv.add_argument("--attention-resolutions", type=_ints, default=(4, 2, 1),
                   help="LVDM attention_resolutions (default 4,2,1)")
  command("vae", _vae, "convert a diffusers AutoencoderKL folder", "the vae/ folder")
  command("clip", _clip, "convert a transformers CLIP folder (text and/or vision tower)", "the CLIP folder")
  command("dpt", _dpt, "convert a transformers DPTForDepthEstimation folder", "the DPT folder")
  command("i3d", _i3d, "convert PyTorch InceptionI3d weights (piergiaj's layout) for FVD/KVD",
          "i3d_pretrained_400.pt (or a .safetensors / .pth of the same keys)")
  for add in extra:
    add(command)
  return parser


def summary(reports: dict[str, common.ConversionReport]) -> str:
  """One line per component, plus the first few names left at init or unused."""
  lines = []
  for name, report in reports.items():
    lines.append(f"{name}: {report.summary()}")
    for label, names in (("left at init", report.missing), ("unused", report.unexpected)):
      if names:
        more = f" (+{len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
        lines.append(f"  {label}: {', '.join(names[:_SHOWN])}{more}")
  return "\n".join(lines)


def main(argv: list[str] | None = None, *, extra: Sequence[Callable] = ()) -> int:
  """Runs one conversion; returns the exit status (argparse exits with 2 on bad arguments)."""
  args = build_parser(extra).parse_args(argv)
  try:
    if os.path.exists(args.out) and not args.overwrite:
      raise InputError(args.out, "already exists", "pass --overwrite to replace it, or choose another path")
    reports = args.run(args)
  except VidjaxError as e:
    print(f"vidjax convert {args.command}: error: {e}", file=sys.stderr)
    return EXIT_ERROR
  print(summary(reports))
  print(f"wrote {args.out}")
  return EXIT_OK


if __name__ == "__main__":
  sys.exit(main())
