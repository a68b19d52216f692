"""Customization on the toy world: teach the embedded checkpoint a colour it never saw, then edit into it.

  python benchmarks/finetune_toy.py --out_dir runs/finetune_toy            # LoRA and full, then the figures
  python benchmarks/finetune_toy.py --out_dir DIR --modes lora --steps 200 --num_clips 10

1. Subject set: --num_images toy scenes (seeds from 3,000,000, outside the training and benchmark
   seeds) with every object painted CONCEPT_RGB, a brown (Lab distance >= 46.9 from each of the 10
   palette colours; nearest: orange), one 64x64 frame each, written as PNGs with their ground-truth
   disparity as <stem>.depth.npy (the toy checkpoint was trained on it), and (--captions, the default)
   each scene's caption naming the token in context ("a sks sphere and a sks cube on a grid floor at
   sunset") as <stem>.txt; --no-captions leaves finetune's caption_template ("a sks"). The token's row
   starts as --init_word's (default orange, the palette colour nearest CONCEPT_RGB).
2. `vidjax.pipelines.finetune.finetune` on the embedded toy checkpoint, per --modes.
3. Held-out edits: `vidjax.eval.toy_edit.edit_cases` (seeds from 1,000,000, the benchmark's; --first_seed
   500000 gives validation scenes to choose settings on), depth kept, prompt = the
   scene's caption with every object's colour word replaced by the token ("a sks cube and a sks cone on
   ..."), 25 DDIM steps at the checkpoint's guidance, seed = the clip's seed. Each object's mean output
   colour (eroded mask, all frames) is named by the nearest of 11 references in CIE Lab: the 10 palette
   colours and the concept, each rendered on that object under the scene's lighting (toy_edit's
   colour_accuracy rule plus the new colour). The figure: objects named the concept / all objects, for
   the base checkpoint (the token is <unk> to it) and each fine-tuned one. Targets: >= 70 % fine-tuned,
   < 10 % base.
4. A PNG of edited frames (rows: source, base, each mode; 4 frames of 3 clips) as --out_dir/frames.png.

Writes --out_dir/report.json. Measured figures: README "Customization".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from vidjax import toyworld
from vidjax.eval import toy_edit
from vidjax.eval.toy_edit import _colour_regions, _region_means, _to_lab  # the benchmark's own colour rule
from vidjax.pipelines import finetune
from vidjax.pipelines.edit import VideoEditPipeline

CONCEPT_RGB = (0.55, 0.30, 0.10)
SUBJECT_SEEDS = 3_000_000


def write_subject_folder(folder: str, token: str, num_images: int, *, size: int = 64, captions: bool = False) -> None:
  """num_images PNGs of toy scenes painted CONCEPT_RGB, with .depth.npy sidecars (and .txt captions)."""
  from PIL import Image

  os.makedirs(folder, exist_ok=True)
  for i in range(num_images):
    scene = toyworld.paint(toyworld.sample_scene(SUBJECT_SEEDS + i), token, CONCEPT_RGB)
    clip = toyworld.render_clip(scene.seed, 1, size, size, scene=scene)
    Image.fromarray(clip.rgb[0]).save(os.path.join(folder, f"{i:02d}.png"))
    np.save(os.path.join(folder, f"{i:02d}.depth.npy"), clip.disparity[0])
    if captions:
      with open(os.path.join(folder, f"{i:02d}.txt"), "w") as f:
        f.write(clip.caption + "\n")


def concept_fraction(pipe: VideoEditPipeline, cases, token: str) -> tuple[float, list[np.ndarray], list[dict]]:
  """(objects named the concept / objects, the edited videos, per-case rows) for one checkpoint."""
  hits, total, videos, rows = 0, 0, [], []
  for case in cases:
    scene = toyworld.sample_scene(case.seed)
    painted = toyworld.paint(scene, token, CONCEPT_RGB)
    video = np.asarray(pipe(depth=case.source.disparity, prompt=toyworld.caption_for(painted), seed=case.seed,
                            num_inference_steps=25, temporal_guidance_scale=1.0).frames)
    _, t, h, w = case.source.masks.shape[1], *case.source.rgb.shape[:3]
    regions = _colour_regions(case.source.masks)
    concept = _region_means(toyworld.render_clip(case.seed, t, h, w, 2, scene=painted).rgb, regions)
    references = np.concatenate([case.palette_means, concept[:, None]], axis=1)  # (K, 11, 3)
    got = np.linalg.norm(_to_lab(_region_means(video, regions))[:, None] - _to_lab(references), axis=-1).argmin(1)
    names = [(list(toy_edit.PALETTE) + [token])[j] for j in got]
    hits += sum(n == token for n in names)
    total += len(names)
    videos.append(video)
    rows.append({"seed": case.seed, "prompt": toyworld.caption_for(painted), "colours_got": names})
  return hits / total, videos, rows


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out_dir", required=True)
  parser.add_argument("--modes", default="lora,full")
  parser.add_argument("--token", default="sks")
  parser.add_argument("--num_images", type=int, default=20)
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--num_clips", type=int, default=20)
  parser.add_argument("--first_seed", type=int, default=1_000_000,
                      help="held-out scenes from this seed on (default: the benchmark's); e.g. 500000 to choose "
                           "settings on validation scenes, not on the benchmark")
  parser.add_argument("--lr", type=float, default=None)
  parser.add_argument("--token_lr", type=float, default=finetune.FinetuneSettings.token_lr)
  parser.add_argument("--lora_rank", type=int, default=finetune.FinetuneSettings.lora_rank,
                      help="the adapters' rank; their alpha is set to it (scale alpha / rank = 1, as at rank 4)")
  parser.add_argument("--init_word", default="orange",
                      help="the token's row starts as this word's ('': the mean row); orange: the palette colour "
                      "nearest the concept in Lab (chosen from CONCEPT_RGB, not from the held-out edits)")
  parser.add_argument("--captions", action=argparse.BooleanOptionalAction, default=True,
                      help="write each subject image's scene caption naming the token ('a sks cube on ...'); "
                      "--no-captions: finetune's default 'a sks'")
  parser.add_argument("--prior_fraction", type=float, default=0.5)
  parser.add_argument("--skip_base", action="store_true", help="do not edit with the base checkpoint")
  args = parser.parse_args(argv)
  images = os.path.join(args.out_dir, "subject")
  write_subject_folder(images, args.token, args.num_images, captions=args.captions)
  cases = toy_edit.edit_cases(args.num_clips, first_seed=args.first_seed)
  report = {"concept_rgb": CONCEPT_RGB, "num_images": args.num_images, "num_clips": args.num_clips,
            "first_seed": args.first_seed,
            "num_objects": sum(c.source.masks.shape[1] for c in cases), "results": {}}
  videos = {}
  checkpoints = {} if args.skip_base else {"base": toyworld.CHECKPOINT}
  for mode in args.modes.split(","):
    out = os.path.join(args.out_dir, mode)
    settings = finetune.FinetuneSettings(token=args.token, mode=mode, num_steps=args.steps, lr=args.lr,
                                         init_word=args.init_word, prior_fraction=args.prior_fraction,
                                         token_lr=args.token_lr, lora_rank=args.lora_rank,
                                         lora_alpha=float(args.lora_rank))
    info = finetune.finetune(settings, toyworld.CHECKPOINT, images, out).manifest
    report["results"][mode] = {"train_seconds": info["seconds"], "num_steps": args.steps,
                               "lr": settings.learning_rate, "token_lr": settings.token_lr,
                               "lora_rank": settings.lora_rank, "init_word": args.init_word,
                               "captions": args.captions, "prior_fraction": args.prior_fraction}
    checkpoints[mode] = out
  for name, path in checkpoints.items():
    start = time.perf_counter()
    fraction, videos[name], rows = concept_fraction(VideoEditPipeline.from_pretrained(path, progress=False), cases,
                                                    args.token)
    report["results"].setdefault(name, {}).update(concept_fraction=fraction, edit_seconds=time.perf_counter() - start,
                                                  rows=rows)
    print(f"{name}: {100 * fraction:.1f} % of {report['num_objects']} held-out objects in the concept colour",
          flush=True)
  _write_png(os.path.join(args.out_dir, "frames.png"), cases, videos)
  with open(os.path.join(args.out_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=1)
  return 0


def _write_png(path: str, cases, videos: dict[str, list[np.ndarray]]) -> None:
  from PIL import Image

  rows = [np.concatenate([np.concatenate(list(c.source.rgb[::2]), axis=1) for c in cases[:3]], axis=1)]
  rows += [np.concatenate([np.concatenate(list(v[::2]), axis=1) for v in vs[:3]], axis=1) for vs in videos.values()]
  Image.fromarray(np.concatenate(rows, axis=0)).resize((rows[0].shape[1] * 2, len(rows) * 128), 0).save(path)
  print(f"frames (rows: source, {', '.join(videos)}) written to {path}")


if __name__ == "__main__":
  sys.exit(main())
