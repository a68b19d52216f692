"""Toy-world recolouring benchmark: does an edit keep the silhouettes and take the prompt's colours?

A case is a held-out toy scene (seeds from 1_000_000; training uses 0..2047). The model gets the
source clip's disparity and a caption naming NEW object colours (a palette rotation per seed that
keeps objects distinguishable from the background); the ideal output is the target render, the
same scene re-rendered with those colours (same silhouettes, same lighting).

  cases = edit_cases(20)
  report = evaluate(lambda case: my_edit(case.source.disparity, case.target_caption), cases)
  report["mean_iou"], report["colour_accuracy"], report["mean_consistency"]

Metrics, on an output video uint8 (T, H, W, 3) of the case's size (colours compared in CIE Lab):
  silhouette_iou: each output pixel is labelled background or object k by its nearest colour
    (1-NN) among exemplars from the same frame of the target render; per object, the IoU of its
    predicted pixels with its source mask is averaged over the frames, then over the objects.
    Source masks are never used to segment, so an output that ignores the prompt's colours (or the
    structure) loses IoU.
  colour_accuracy: per object, the mean output colour inside its source mask eroded by 1 pixel,
    over all frames, is named after the nearest of the 10 palette colours as they look on that
    object under the scene's lighting; correct when that is the prompt's colour.
  colour_presence (not in `evaluate`'s report): per object, whether pixels labelled as it (1-NN, as
    above) cover at least half its area anywhere in the frame: prompt adherence without location.
  frame_consistency: mean |frame[t+1] - frame[t]| of the output over that of the target render;
    1.0 is as smooth as the ideal, > 1 flickers, < 1 moves less than the scene (e.g. frozen).

Scores of a VideoEditPipeline checkpoint: `vidjax eval-toy-edit [--checkpoint DIR]`
(`vidjax.pipelines.toy_edit_cli`: the pipeline sits above this layer). `format_row` and `summary`
print a report as that command does.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import numpy as np

from vidjax import toyworld
from vidjax.errors import InputError

PALETTE = tuple(toyworld.COLOURS)  # the 10 caption colours, in COLOURS order
# The toy training set's scene seeds (configs/toy.py builds from seed 0; 2048 covers every size we
# train at); benchmark seeds must stay outside.
TRAINING_SEEDS = range(0, 2048)
# A scene is skipped when some object shows fewer pixels than this in some frame: its IoU and mean
# colour would rest on a handful of edge pixels. About 1 scene in 100 at 64x64.
MIN_OBJECT_PIXELS = 20
# Exemplars per label per frame for the 1-NN segmentation (evenly spaced over the sorted distinct
# colours, so deterministic): bounds the distance matrix at 4096 x 1024 for 3 objects at 64x64.
MAX_EXEMPLARS_PER_LABEL = 256
# New colours must stand out from the background (see `new_colours_for`): an object pixel is
# confusable when its colour is within MIN_CONTRAST_LAB (CIE Lab units; ~2 is just noticeable) of a
# background colour in its frame. 10 changes the preferred colours of ~1 scene in 3 (night scenes,
# white on light floors; white targets become rare, 6 of the first 190 objects) and lifts the IoU
# of the target render plus sigma-5 RGB noise from 0.88 to 0.97 on the default 20 cases.
MIN_CONTRAST_LAB = 10.0
MAX_CONFUSABLE_FRACTION = 0.05
# Time steps a reference image is rendered at, in order of preference: after the clip's last frame
# (step 14 at 8 frames, stride 2), where objects have moved and the camera has turned.
REFERENCE_STEPS = (24, 28, 20, 32, 18)
_MAX_SKIPPED_FRACTION = 10  # edit_cases gives up after trying 10x num_clips (+100) seeds


@dataclasses.dataclass(frozen=True, eq=False)
class EditCase:
  """One recolouring task on a held-out toy scene with K objects.

  Attributes:
    seed: the scene's seed.
    source: the clip to edit (rgb uint8 (T, H, W, 3), disparity float32 (T, H, W) in [0, 1],
      masks bool (T, K, H, W), caption with the old colours).
    new_colours: the prompt's colour for each object, in mask order.
    target_caption: `caption_for(recolour(scene, new_colours))`, the edit prompt.
    target: the recoloured scene rendered: the ideal output (same masks as `source`).
    palette_means: float64 (K, 10, 3) in [0, 1], the mean colour of object k painted PALETTE[j],
      over its eroded mask and all frames: the references of `colour_accuracy`.
  """

  seed: int
  source: toyworld.ToyClip
  new_colours: tuple[str, ...]
  target_caption: str
  target: toyworld.ToyClip
  palette_means: np.ndarray


def new_colours_for(scene: toyworld.Scene, confusable: np.ndarray | None = None) -> tuple[str, ...]:
  """The benchmark's colours for `scene`: each source colour moved `shift` places along PALETTE.

  A rotation of the palette maps distinct colours to distinct colours, and a shift of 1..9 (never
  0 mod 10) never keeps a colour, so the new colours differ from the source ones and from each
  other. The preferred shift is 1 + seed % 9, so over seeds every target colour occurs. With
  `confusable` (float (K, 10), see `_confusable_fractions`), shifts are tried from the preferred
  one on, cyclically, and the first whose colours leave every object at most
  MAX_CONFUSABLE_FRACTION confusable with the background wins (else the least confusable one):
  a white cube on a night floor the colour of its shadowed side has no colour-defined silhouette,
  and would make IoU measure the noise of the output instead of its shapes.
  """
  preferred = scene.seed % (len(PALETTE) - 1)
  best = None
  for i in range(len(PALETTE) - 1):
    shift = 1 + (preferred + i) % (len(PALETTE) - 1)
    indices = [(PALETTE.index(o.colour) + shift) % len(PALETTE) for o in scene.objects]
    if confusable is None:
      return tuple(PALETTE[j] for j in indices)
    worst = max(confusable[k, j] for k, j in enumerate(indices))
    if best is None or worst < best[0]:
      best = (worst, indices)
    if worst <= MAX_CONFUSABLE_FRACTION:
      break
  return tuple(PALETTE[j] for j in best[1])


def edit_cases(num_clips: int = 20, *, first_seed: int = 1_000_000, num_frames: int = 8, size: int = 64,
               stride: int = 2) -> list[EditCase]:
  """The first `num_clips` usable scenes from seed `first_seed` on (deterministic).

  Seeds are tried in order; a scene is skipped when an object has fewer than MIN_OBJECT_PIXELS
  visible pixels in any frame. New colours: `new_colours_for`, avoiding background-like colours.
  Clips are `num_frames` frames of size x size at `stride`, as in training (8, 64, 2).
  """
  if int(num_clips) != num_clips or num_clips < 1:
    raise InputError("num_clips", f"must be a positive integer, got {num_clips!r}", "pass num_clips >= 1")
  if first_seed < TRAINING_SEEDS.stop:
    raise InputError("first_seed", f"{first_seed} overlaps the training seeds {TRAINING_SEEDS}",
                     f"pass first_seed >= {TRAINING_SEEDS.stop} (the default is 1_000_000)")
  limit = first_seed + _MAX_SKIPPED_FRACTION * num_clips + 100
  cases: list[EditCase] = []
  seed = first_seed
  while len(cases) < num_clips:
    if seed >= limit:
      raise InputError("edit_cases", f"only {len(cases)} of seeds {first_seed}..{limit - 1} show every object "
                       f"with >= {MIN_OBJECT_PIXELS} pixels", "use a larger size or fewer clips")
    case = _make_case(seed, num_frames, size, stride)
    if case is not None:
      cases.append(case)
    seed += 1
  return cases


def _make_case(seed: int, num_frames: int, size: int, stride: int) -> EditCase | None:
  """The case of `seed`, or None when an object is barely visible (see MIN_OBJECT_PIXELS)."""
  scene = toyworld.sample_scene(seed)
  render = lambda s: toyworld.render_clip(seed, num_frames, size, size, stride, scene=s)
  source = render(scene)
  if not scene.objects or source.masks.sum(axis=(2, 3)).min() < MIN_OBJECT_PIXELS:
    return None
  # Objects never light or shade each other (no inter-reflections; shadows fall on the floor
  # only), and the background does not depend on their colours, so painting every object palette
  # colour j at once shows each one exactly as it would look alone in colour j: 10 renders per
  # case instead of 10 per object.
  palette_rgb = [render(toyworld.recolour(scene, [name] * len(scene.objects))).rgb for name in PALETTE]
  colours = new_colours_for(scene, _confusable_fractions(source, palette_rgb))
  target_scene = toyworld.recolour(scene, colours)
  regions = _colour_regions(source.masks)
  palette_means = np.stack([_region_means(rgb, regions) for rgb in palette_rgb], axis=1)
  return EditCase(seed=seed, source=source, new_colours=colours, target_caption=toyworld.caption_for(target_scene),
                  target=render(target_scene), palette_means=palette_means)


def reference_image(case: EditCase) -> np.ndarray:
  """uint8 (H, W, 3): a content image for image prompting (Gen-1's "like this picture").

  The case's scene with its new colours, seen later on its camera path than any frame of the clip
  (the first of REFERENCE_STEPS where every object shows MIN_OBJECT_PIXELS), so the picture gives
  the colours and shapes but not the clip's layout: that must come from the depth.
  """
  scene = toyworld.recolour(toyworld.sample_scene(case.seed), case.new_colours)
  _, height, width, _ = case.source.rgb.shape
  counts = []
  for step in REFERENCE_STEPS:
    frame = toyworld.render_scene(scene, np.array([step]), height, width)
    visible = [(frame.surface[0] == k + 1).sum() for k in range(len(scene.objects))]
    if min(visible) >= MIN_OBJECT_PIXELS:
      return frame.rgb[0]
    counts.append(min(visible))
  return toyworld.render_scene(scene, np.array([REFERENCE_STEPS[int(np.argmax(counts))]]), height, width).rgb[0]


def _confusable_fractions(source: toyworld.ToyClip, palette_rgb: Sequence[np.ndarray]) -> np.ndarray:
  """float (K, 10): the fraction of object k's pixels (all frames) that, painted PALETTE[j], lie
  within MIN_CONTRAST_LAB of a background colour of their frame.

  palette_rgb: per palette colour, uint8 (T, H, W, 3) frames of the scene with every object in it.
  """
  masks = source.masks  # (T, K, H, W)
  confusable = np.zeros((masks.shape[1], len(palette_rgb)))
  for t in range(masks.shape[0]):
    on_object = masks[t].any(axis=0)
    background = _to_lab(np.unique(source.rgb[t][~on_object], axis=0))  # (B, 3)
    colours = _to_lab(np.stack([rgb[t][on_object] for rgb in palette_rgb]))  # (10, N, 3)
    distance2 = _squared_distances(colours.reshape(-1, 3), background).min(axis=1).reshape(colours.shape[:2])
    near = distance2 < MIN_CONTRAST_LAB**2  # (10, N)
    confusable += (masks[t][:, on_object].astype(np.float64) @ near.T)  # (K, N) @ (N, 10)
  return confusable / masks.sum(axis=(0, 2, 3))[:, None]


# ----------------------------------------------------------------------------------------------
# Metrics.


def segment(output: np.ndarray, case: EditCase) -> np.ndarray:
  """Labels each output pixel by its nearest exemplar colour: int8 (T, H, W), 0 = background, k + 1 = object k.

  Exemplars come from the same frame of the target render (its floor texture, sky and fog are the
  background; each object's pixels its label), at most MAX_EXEMPLARS_PER_LABEL distinct colours
  per label. Distances are Euclidean in CIE Lab; a colour shared by two labels goes to the lower
  one (background first).
  """
  video = _check_video(output, case)
  labels = _target_labels(case)
  predicted = np.empty(labels.shape, np.int8)
  for t in range(video.shape[0]):
    colours, exemplar_labels = _exemplars(case.target.rgb[t].reshape(-1, 3), labels[t].reshape(-1))
    exemplars = _to_lab(colours)
    queries = _to_lab(video[t].reshape(-1, 3))
    nearest = _squared_distances(queries, exemplars).argmin(axis=1)
    predicted[t] = exemplar_labels[nearest].reshape(labels.shape[1:])
  return predicted


def object_frame_ious(output: np.ndarray, case: EditCase, *, labels: np.ndarray | None = None) -> np.ndarray:
  """Per frame and object, the IoU of its `segment` pixels with its source mask: float64 (T, K).

  NaN where the object is neither visible nor predicted in that frame (nothing to find, nothing
  found; cannot happen in `edit_cases`, whose objects show in every frame). `labels`: the output's
  `segment`, when the caller already has it (the segmentation is the metrics' costly part); here and
  in `object_ious`, `silhouette_iou` and `colour_presence`.
  """
  predicted = (segment(output, case) if labels is None else labels)[:, None]  # (T, 1, H, W)
  found = predicted == np.arange(1, case.source.masks.shape[1] + 1)[None, :, None, None]
  intersection = (found & case.source.masks).sum(axis=(2, 3))
  union = (found | case.source.masks).sum(axis=(2, 3))
  return np.where(union > 0, intersection / np.maximum(union, 1), np.nan)


def object_ious(output: np.ndarray, case: EditCase, *, labels: np.ndarray | None = None) -> np.ndarray:
  """Per object, `object_frame_ious` averaged over the frames where it is defined: float64 (K,)
  (1.0 for an object never visible nor predicted)."""
  ious = object_frame_ious(output, case, labels=labels)
  defined = ~np.isnan(ious)
  return np.where(defined.any(axis=0), np.nansum(ious, axis=0) / np.maximum(defined.sum(axis=0), 1), 1.0)


def colour_presence(output: np.ndarray, case: EditCase, min_area: float = 0.5, *,
                    labels: np.ndarray | None = None) -> np.ndarray:
  """bool (K,): whether object k's prompt colour shows anywhere in the output over at least `min_area`
  of the object's own area (both averaged over the frames).

  Pixels count for object k when `segment` labels them k (nearest to its colour in the target
  render), wherever they are: prompt adherence without the silhouettes, the side of Gen-1's t_s
  trade-off that `colour_accuracy` (measured inside the source masks) cannot show once the shapes go.
  """
  predicted = segment(output, case) if labels is None else labels
  areas = case.source.masks.sum(axis=(0, 2, 3))
  found = np.stack([(predicted == k + 1).sum() for k in range(len(areas))])
  return found >= min_area * areas


def silhouette_iou(output: np.ndarray, case: EditCase, *, labels: np.ndarray | None = None) -> float:
  """`object_ious` averaged over the objects (each object weighs the same, whatever its size)."""
  return float(object_ious(output, case, labels=labels).mean())


def predicted_colours(output: np.ndarray, case: EditCase) -> tuple[str, ...]:
  """Per object, the palette colour nearest (in Lab) to the output's mean colour on it.

  The mean is over the object's source mask eroded by 1 pixel (edges blur in decoded video), over
  all frames; the references are `case.palette_means`, measured the same way on renders, so the
  target render's colours match exactly and lighting (night, sunset) is accounted for.
  """
  video = _check_video(output, case)
  means = _region_means(video, _colour_regions(case.source.masks))
  distances = np.linalg.norm(_to_lab(means)[:, None, :] - _to_lab(case.palette_means), axis=-1)
  return tuple(PALETTE[j] for j in distances.argmin(axis=1))


def colour_accuracy(output: np.ndarray, case: EditCase) -> np.ndarray:
  """bool (K,): whether each object's `predicted_colours` is the prompt's colour."""
  return np.array([got == wanted for got, wanted in zip(predicted_colours(output, case), case.new_colours)])


def frame_consistency(output: np.ndarray, case: EditCase) -> float:
  """Mean absolute change between consecutive output frames over the same for the target render.

  Both means run over all frame pairs, pixels and channels (uint8 scale). 1.0: as smooth as the
  ideal edit; > 1: flicker; < 1: less motion than the scene has (a frozen video scores 0).
  """
  video = _check_video(output, case)
  if video.shape[0] < 2:
    return 1.0

  def mean_change(v: np.ndarray) -> float:
    return float(np.abs(np.diff(v.astype(np.float32), axis=0)).mean())

  # Toy scenes always move; the floor only guards the division.
  return mean_change(video) / max(mean_change(case.target.rgb), 1e-3)


def evaluate(edit_fn: Callable[[EditCase], np.ndarray], cases: Sequence[EditCase], *,
             on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
  """Runs `edit_fn(case) -> uint8 (T, H, W, 3)` on every case and scores it.

  Returns:
    mean_iou: `silhouette_iou` averaged over cases; colour_accuracy: the fraction of all objects
    (over all cases) whose colour is right; mean_consistency: `frame_consistency` averaged over
    cases; num_cases, num_objects, num_colours_correct; rows: one JSON-ready dict per case (seed,
    captions, iou, object_ious, colours_wanted, colours_got, colours_correct, consistency,
    edit_seconds), each also passed to `on_row` as soon as it is scored.
  """
  if not cases:
    raise InputError("cases", "is empty", "pass edit_cases(num_clips) with num_clips >= 1")
  rows = []
  for case in cases:
    start = time.perf_counter()
    output = edit_fn(case)
    seconds = time.perf_counter() - start
    ious = object_ious(output, case)
    got = predicted_colours(output, case)
    row = {
        "seed": case.seed,
        "source_caption": case.source.caption,
        "target_caption": case.target_caption,
        "iou": float(ious.mean()),
        "object_ious": [float(x) for x in ious],
        "colours_wanted": list(case.new_colours),
        "colours_got": list(got),
        "colours_correct": [g == w for g, w in zip(got, case.new_colours)],
        "consistency": frame_consistency(output, case),
        "edit_seconds": seconds,
    }
    rows.append(row)
    if on_row is not None:
      on_row(row)
  num_objects = sum(len(r["colours_correct"]) for r in rows)
  num_correct = sum(sum(r["colours_correct"]) for r in rows)
  return {
      "mean_iou": float(np.mean([r["iou"] for r in rows])),
      "colour_accuracy": num_correct / num_objects,
      "mean_consistency": float(np.mean([r["consistency"] for r in rows])),
      "num_cases": len(rows),
      "num_objects": num_objects,
      "num_colours_correct": num_correct,
      "rows": rows,
  }


# ----------------------------------------------------------------------------------------------
# Helpers.


def _check_video(output: Any, case: EditCase) -> np.ndarray:
  video = np.asarray(output)
  if video.dtype != np.uint8 or video.shape != case.target.rgb.shape:
    raise InputError(f"edit output for seed {case.seed}", f"got {video.dtype} {video.shape}",
                     f"return uint8 frames of shape {case.target.rgb.shape} (T, H, W, 3)")
  return video


def _target_labels(case: EditCase) -> np.ndarray:
  """int8 (T, H, W): 0 where the target shows floor or sky, k + 1 where it shows object k."""
  masks = case.target.masks  # (T, K, H, W), at most one object per pixel
  ids = np.arange(1, masks.shape[1] + 1, dtype=np.int8)[None, :, None, None]
  return (masks * ids).sum(axis=1).astype(np.int8)


def _exemplars(colours: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Distinct (colour, label) pairs of one frame, thinned to MAX_EXEMPLARS_PER_LABEL per label.

  colours uint8 (N, 3), labels (N,) -> colours uint8 (E, 3), labels int8 (E,), sorted by label.
  """
  pairs = np.unique(np.concatenate([colours.astype(np.int16), labels[:, None].astype(np.int16)], axis=1), axis=0)
  kept = []
  for label in np.unique(pairs[:, 3]):
    rows = pairs[pairs[:, 3] == label]
    if len(rows) > MAX_EXEMPLARS_PER_LABEL:
      rows = rows[np.linspace(0, len(rows) - 1, MAX_EXEMPLARS_PER_LABEL).round().astype(int)]
    kept.append(rows)
  kept = np.concatenate(kept)
  return kept[:, :3].astype(np.uint8), kept[:, 3].astype(np.int8)


def _colour_regions(masks: np.ndarray) -> np.ndarray:
  """Masks bool (T, K, H, W) eroded by 1 pixel (3x3; outside the frame counts as outside).

  An object whose eroded mask is empty in every frame (too thin) keeps its full mask.
  """
  h, w = masks.shape[2:]
  padded = np.pad(masks, ((0, 0), (0, 0), (1, 1), (1, 1)))
  eroded = masks.copy()
  for dy in range(3):
    for dx in range(3):
      eroded &= padded[:, :, dy:dy + h, dx:dx + w]
  empty = ~eroded.any(axis=(0, 2, 3))
  eroded[:, empty] = masks[:, empty]
  return eroded


def _region_means(video: np.ndarray, regions: np.ndarray) -> np.ndarray:
  """Mean colour of uint8 (T, H, W, 3) frames in each of bool (T, K, H, W): float64 (K, 3) in [0, 1]."""
  sums = np.einsum("tkhw,thwc->kc", regions.astype(np.float64), video.astype(np.float64))
  return sums / np.maximum(regions.sum(axis=(0, 2, 3)), 1)[:, None] / 255.0


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Squared Euclidean distances between rows of (N, 3) and (M, 3): float64 (N, M)."""
  return np.maximum((a**2).sum(1)[:, None] - 2 * a @ b.T + (b**2).sum(1)[None, :], 0)


_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]])
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])


def _to_lab(rgb: np.ndarray) -> np.ndarray:
  """sRGB (uint8, or float in [0, 1]) (..., 3) -> CIE Lab float64 (..., 3) under D65.

  Lab rather than RGB because its distances follow perceived differences, which matters for the
  dark colours of night scenes (black, blue and purple differ by a few RGB levels there).
  """
  rgb = np.asarray(rgb)
  rgb = rgb / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float64)
  linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
  xyz = linear @ _SRGB_TO_XYZ.T / _D65_WHITE
  delta = 6 / 29
  f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta**2) + 4 / 29)
  return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def format_row(row: dict[str, Any]) -> str:
  colours = ", ".join(w if ok else f"{w}: got {g}"
                      for w, g, ok in zip(row["colours_wanted"], row["colours_got"], row["colours_correct"]))
  return f"{row['seed']:>8}  {row['iou']:5.3f}  {row['consistency']:7.2f}  {row['edit_seconds']:6.1f}  {colours}"


def summary(report: dict[str, Any]) -> str:
  return (f"{report['num_cases']} clips: mean IoU {report['mean_iou']:.3f} | colour accuracy "
          f"{report['colour_accuracy']:.3f} ({report['num_colours_correct']}/{report['num_objects']} objects) | "
          f"consistency {report['mean_consistency']:.2f}")
