"""The papers' controls as measured curves on the toy world (`vidjax fidelity`).

Each claim sweeps one control of a `VideoEditPipeline` over held-out toy recolouring cases
(`vidjax.eval.toy_edit`: each scene's depth and a caption with new colours, whose ideal output is
known) and scores every point by the benchmark's metrics, per scene, so each point carries a mean
and an error bar over scenes (the scenes are the seeds: scene, noise and colours all follow it):

  temporal_guidance   Gen-1 Fig. 4: omega_t (Eq. 8) against frame consistency.
  structure_fidelity  Gen-1 Fig. 6 / 10: t_s against prompt adherence (colour presence: the prompt's
                      colours anywhere in the frame) and agreement with the input's silhouettes
                      (IoU); needs a checkpoint trained over t_s > 0
                      ('depth_latent', configs/toy_fidelity.py).
  temporal_window     Make-Your-Video Fig. 6: clips `long_clip_factor` x the trained length, sampled
                      with the causal window L_M = the trained length, with full causal attention
                      over the whole past, and at the trained length (the reference), per segment.
  temporal_layers     Make-Your-Video Table 3: the video model against the per-frame image model
                      (`image_mode`, the temporal layers off) at the same depth.

  claims = [run_claim(pipe, name, FidelitySettings()) for name in supported_claims(pipe)]

`vidjax fidelity` (`fidelity_cli.py`) runs them, writes the JSON of every point and one PNG per claim.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from vidjax.errors import ConfigError, InputError
from vidjax.eval import toy_edit
from vidjax.pipelines.edit import VideoEditPipeline

CLAIMS = ("temporal_guidance", "structure_fidelity", "temporal_window", "temporal_layers")
# The per-scene figures every point carries (see `_scene_metrics`).
METRICS = ("iou", "colour_accuracy", "colour_presence", "consistency")
# The paper's direction per claim, as the JSON and the plots state it (the measured curve may differ:
# that is a finding, reported as measured).
EXPECTED = {
    "temporal_guidance": "consistency improves (the frame-change ratio falls towards 1) as omega_t rises",
    "structure_fidelity": "prompt adherence (colour presence, anywhere in the frame) rises and silhouette IoU falls "
                          "as t_s rises",
    "temporal_window": "with L_M = the trained length, the later segments of a long clip keep the trained length's "
                       "IoU; with full attention they degrade",
    "temporal_layers": "the video model is more consistent (a lower frame-change ratio) than the image model at a "
                       "similar IoU",
}


@dataclasses.dataclass(frozen=True)
class FidelitySettings:
  """What the sweeps run: held-out scenes, the sampler's steps and each claim's points.

  guidance_scale None takes the checkpoint's sampling default. long_clip_factor: the long clips'
  length over the trained length (Make-Your-Video: 4x). z is the error bars' half-width in standard
  errors of the mean over scenes (1.96: a 95 % interval).
  """

  num_clips: int = 20
  first_seed: int = 1_000_000
  num_inference_steps: int = 25
  guidance_scale: float | None = None
  temporal_guidance_scales: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
  structure_fidelities: tuple[int, ...] | None = None  # None: every t_s the checkpoint was trained on
  long_clip_factor: int = 4
  z: float = 1.96

  def check(self) -> None:
    if int(self.num_clips) != self.num_clips or self.num_clips < 2:
      raise InputError("num_clips", f"{self.num_clips!r}: error bars need at least 2 scenes", "pass num_clips >= 2")
    if int(self.long_clip_factor) != self.long_clip_factor or self.long_clip_factor < 2:
      raise InputError("long_clip_factor", f"{self.long_clip_factor!r} is not an integer >= 2",
                       "pass long_clip_factor >= 2 (Make-Your-Video: 4)")
    if not self.temporal_guidance_scales or min(self.temporal_guidance_scales) < 0:
      raise InputError("temporal_guidance_scales", f"{self.temporal_guidance_scales!r}",
                       "pass one or more omega_t >= 0")


def supported_claims(pipe: VideoEditPipeline) -> tuple[str, ...]:
  """The claims `pipe`'s checkpoint can show: temporal layers for omega_t and image mode, a causal
  window for long clips, a trained t_s range for structure fidelity."""
  unet = pipe.model.config.unet
  claims = []
  if unet.has_temporal:
    claims += ["temporal_guidance", "temporal_layers"]
  if pipe.model_dir.structure_fidelity_range[1] > 0:
    claims.append("structure_fidelity")
  if pipe.max_temporal_window is not None and pipe.trained_frames:
    claims.append("temporal_window")
  return tuple(name for name in CLAIMS if name in claims)


def check_claim(pipe: VideoEditPipeline, claim: str) -> None:
  """Raises InputError for an unknown claim, ConfigError when `pipe`'s checkpoint cannot show it."""
  if claim not in CLAIMS:
    raise InputError("claim", f"{claim!r} is not one of {CLAIMS}", f"pass one of {', '.join(CLAIMS)}")
  if claim not in supported_claims(pipe):
    raise ConfigError(f"claim {claim}", f"the checkpoint {pipe.model_dir.path} cannot show it", _NEEDS[claim])


def run_claim(pipe: VideoEditPipeline, claim: str, settings: FidelitySettings, *,
              on_point: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
  """Sweeps one claim's control; returns its JSON-ready record.

  Returns:
    {claim, expected, x (the control's name), settings, points}: each point is {label, x (the value;
    None for named variants), num_frames, seeds (its scenes: a long clip's differ where an object
    leaves the view within it), metrics: {name: {mean, error, values}}}, error being
    z standard errors of the mean over scenes; temporal_window's points also carry segment_iou
    (the IoU per trained-length segment of the clip, the same statistics per segment).
  Raises:
    ConfigError when the checkpoint cannot show the claim (see `supported_claims`).
  """
  settings.check()
  check_claim(pipe, claim)
  trained = pipe.trained_frames or 8
  guidance = (pipe.model_dir.sampling_defaults["guidance_scale"] if settings.guidance_scale is None
              else settings.guidance_scale)
  base = dict(num_inference_steps=settings.num_inference_steps, guidance_scale=guidance, temporal_guidance_scale=1.0)
  short = toy_edit.edit_cases(settings.num_clips, first_seed=settings.first_seed, num_frames=trained)
  if claim == "temporal_guidance":
    sweep = [(f"omega_t {w:g}", w, short, dict(temporal_guidance_scale=float(w)))
             for w in settings.temporal_guidance_scales]
  elif claim == "structure_fidelity":
    low, high = pipe.model_dir.structure_fidelity_range
    values = settings.structure_fidelities or tuple(range(low, high + 1))
    sweep = [(f"t_s {v}", int(v), short, dict(structure_fidelity=int(v))) for v in values]
  elif claim == "temporal_layers":
    sweep = [("image model", None, short, dict(image_mode=True)), ("video model", None, short, {})]
  else:
    length = trained * settings.long_clip_factor
    long = toy_edit.edit_cases(settings.num_clips, first_seed=settings.first_seed, num_frames=length)
    sweep = [(f"{trained} frames (trained length)", None, short, {}),
             (f"{length} frames, L_M {trained}", None, long, dict(temporal_window=trained)),
             (f"{length} frames, full attention", None, long, dict(temporal_window=length))]
  points = []
  for label, x, cases, changes in sweep:
    point = _point(pipe, label, x, cases, {**base, **changes}, settings.z, trained, claim == "temporal_window")
    points.append(point)
    if on_point is not None:
      on_point(point)
  return {"claim": claim, "expected": EXPECTED[claim], "x": _X_NAMES[claim],
          "settings": {**dataclasses.asdict(settings), "guidance_scale": guidance,
                       "checkpoint": str(pipe.model_dir.path), "seeds": [case.seed for case in short]},
          "points": points}


_X_NAMES = {"temporal_guidance": "temporal_guidance_scale", "structure_fidelity": "structure_fidelity",
            "temporal_window": "variant", "temporal_layers": "variant"}
_NEEDS = {"temporal_guidance": "use a checkpoint with temporal layers (the embedded toy checkpoint)",
          "temporal_layers": "use a checkpoint with temporal layers (the embedded toy checkpoint)",
          "structure_fidelity": "use a checkpoint trained over t_s > 0 (vidjax/assets/toy_fidelity, or a run of "
                                "configs/toy_fidelity.py exported by vidjax convert run)",
          "temporal_window": "use a checkpoint with causal temporal attention and relative positions"}


def _point(pipe: VideoEditPipeline, label: str, x: Any, cases: list[toy_edit.EditCase], kwargs: dict[str, Any],
           z: float, segment: int, with_segments: bool) -> dict[str, Any]:
  """One sweep point: every case edited with `kwargs` and scored; statistics over the cases."""
  rows, segments = [], []
  for case in cases:
    frames = np.asarray(pipe(depth=case.source.disparity, prompt=case.target_caption, seed=case.seed,
                             num_frames=len(case.source.disparity), progress=False, **kwargs).frames)
    labels = toy_edit.segment(frames, case)  # once: every IoU and the presence read it
    rows.append(_scene_metrics(frames, case, labels))
    if with_segments:
      per_frame = np.nanmean(toy_edit.object_frame_ious(frames, case, labels=labels), axis=1)  # (T,)
      segments.append(per_frame.reshape(-1, segment).mean(axis=1))
  metrics = {name: _statistics([row[name] for row in rows], z) for name in METRICS}
  point = {"label": label, "x": x, "num_frames": len(cases[0].source.disparity),
           "seeds": [case.seed for case in cases], "metrics": metrics}
  if with_segments:
    point["segment_iou"] = [_statistics(column, z) for column in np.asarray(segments).T]
  return point


def _scene_metrics(frames: np.ndarray, case: toy_edit.EditCase, labels: np.ndarray) -> dict[str, float]:
  """One scene's IoU, colour accuracy (the share of its objects in the prompt's colour, inside their
  silhouettes), colour presence (the same anywhere in the frame) and consistency."""
  return {"iou": toy_edit.silhouette_iou(frames, case, labels=labels),
          "colour_accuracy": float(toy_edit.colour_accuracy(frames, case).mean()),
          "colour_presence": float(toy_edit.colour_presence(frames, case, labels=labels).mean()),
          "consistency": toy_edit.frame_consistency(frames, case)}


def _statistics(values, z: float) -> dict[str, Any]:
  """{mean, error (z standard errors of the mean), values} of per-scene figures."""
  values = np.asarray(values, np.float64)
  error = z * values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
  return {"mean": float(values.mean()), "error": float(error), "values": [float(v) for v in values]}
