"""The papers' video metrics behind one interface: per-item features -> a `Figure`.

A metric reads features that were computed once per item (and can be cached per item, see
`vidjax.eval.features`), stacked over the items into a `FeatureSet` {name: (N, ...) array}:

  fvd = FVD()                                        # reads 'i3d_logits'
  figure = fvd(generated_features, reference_features)
  figure.value, figure.count, figure.protocol

Set metrics (FVD, KVD) compare the distribution of the generated items with a reference set of any
size. Per-item metrics (CLIP frame and prompt consistency, depth fidelity) score each item (`per_item`,
for pages and plots) and report the mean; depth fidelity pairs generated item i with reference item i
(the output with its input). All reductions run in float64 on the host with numpy/scipy.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar, Mapping, Sequence

import numpy as np
import scipy.linalg

from vidjax.errors import InputError

FeatureSet = Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Figure:
  """One reported number: `value` of `metric` over `count` scored items, measured as `protocol` says."""

  metric: str
  value: float
  count: int
  protocol: str


class Metric(abc.ABC):
  """Features per item -> a figure. Subclasses are frozen dataclasses (their fields are the protocol's knobs).

  `needs` names the per-item features read from the generated set, `reference_needs` those read from
  the reference set (empty when the metric has none).
  """

  name: ClassVar[str]

  @property
  @abc.abstractmethod
  def needs(self) -> tuple[str, ...]:
    """Feature names read from the generated items."""

  @property
  def reference_needs(self) -> tuple[str, ...]:
    """Feature names read from the reference items (none by default)."""
    return ()

  @property
  @abc.abstractmethod
  def protocol(self) -> str:
    """One line: what is measured, on which features, with which settings."""

  @abc.abstractmethod
  def value(self, generated: FeatureSet, reference: FeatureSet | None) -> float:
    """The figure's number, from validated feature sets."""

  def __call__(self, generated: FeatureSet, reference: FeatureSet | None = None) -> Figure:
    count = _count(generated, self.needs, "generated")
    if self.reference_needs:
      if reference is None:
        raise InputError(self.name, "needs reference features", f"pass the reference set's {self.reference_needs}")
      _count(reference, self.reference_needs, "reference")
    return Figure(self.name, float(self.value(generated, reference)), count, self.protocol)


def _count(features: FeatureSet, needs: tuple[str, ...], role: str) -> int:
  """The common item count of the features a metric reads; refuses absent, empty or ragged ones."""
  missing = [n for n in needs if n not in features]
  if missing:
    raise InputError(f"{role} features", f"lack {missing} (have {sorted(features)})",
                     "compute them with vidjax.eval.features before scoring")
  counts = {n: len(features[n]) for n in needs}
  if len(set(counts.values())) != 1 or not next(iter(counts.values())):
    raise InputError(f"{role} features", f"item counts {counts} are empty or differ", "stack one row per item")
  return next(iter(counts.values()))


def _matrix(features: FeatureSet, name: str, role: str) -> np.ndarray:
  x = np.asarray(features[name], np.float64)
  if x.ndim != 2:
    raise InputError(f"{role} {name}", f"shape {x.shape}, expected (items, dim)", "stack one vector per item")
  if not np.isfinite(x).all():
    raise InputError(f"{role} {name}", "holds NaN or infinite values", "check the videos and the feature model")
  return x


# --- Distribution metrics: FVD and KVD -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FeatureMoments:
  """Sufficient statistics of a feature set (float64): count, sum and sum of outer products.

  They add across items, batches and hosts (`merge`), so a sharded job gathers three arrays, not features.
  """

  count: int
  total: np.ndarray  # (D,)
  outer: np.ndarray  # (D, D), sum of x x^T

  @classmethod
  def of(cls, features: np.ndarray) -> FeatureMoments:
    x = np.asarray(features, np.float64)
    return cls(len(x), x.sum(axis=0), x.T @ x)

  def merge(self, other: FeatureMoments) -> FeatureMoments:
    return FeatureMoments(self.count + other.count, self.total + other.total, self.outer + other.outer)

  def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) normalised by N (not N - 1), as StyleGAN-V and cd-fvd compute them."""
    mean = self.total / self.count
    return mean, self.outer / self.count - np.outer(mean, mean)


def frechet_distance(a: FeatureMoments, b: FeatureMoments) -> float:
  """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), in float64.

  tr((S_a S_b)^(1/2)) is the sum of the square roots of the eigenvalues of R S_b R with R = S_a^(1/2)
  (the same spectrum as S_a S_b): two symmetric eigendecompositions, real by construction, where a
  general `sqrtm(S_a @ S_b)` can return complex parts from round-off.
  """
  mean_a, cov_a = a.mean_cov()
  mean_b, cov_b = b.mean_cov()
  evals, evecs = scipy.linalg.eigh(cov_a)
  root_a = (evecs * np.sqrt(np.clip(evals, 0.0, None))) @ evecs.T
  inner = scipy.linalg.eigvalsh(root_a @ cov_b @ root_a)
  trace_sqrt = np.sqrt(np.clip(inner, 0.0, None)).sum()
  return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt)


class _Paired:
  """A metric of one feature (its dataclass field `feature`), read from the generated and the reference set."""

  @property
  def needs(self) -> tuple[str, ...]:
    return (self.feature,)

  @property
  def reference_needs(self) -> tuple[str, ...]:
    return (self.feature,)


def _enough_items(x: np.ndarray, role: str, metric: str) -> None:
  count, dim = x.shape
  if count < dim:
    raise InputError(f"{role} videos", f"{count} items are too few for a stable {metric} on {dim}-dimensional "
                     f"features (the covariance is singular below {dim})",
                     f"score at least {dim} videos in each set (the protocols use 2048)")


@dataclasses.dataclass(frozen=True)
class FVD(_Paired, Metric):
  """Fréchet Video Distance (Unterthiner et al. 2019) between generated and reference I3D features.

  Protocol (cd-fvd's and StyleGAN-V's I3D FVD; Make-Your-Video Sec. 4.1 compares 2K samples of 16 frames
  with UCF-101): Kinetics-400 I3D logits (`feature='i3d_logits'`, 400-d; 'i3d_pooled' is the 1024-d
  pre-logit pool) of 16-frame clips resized to 224 x 224 (`vidjax.models.i3d.preprocess_videos`); 2048
  generated videos against the reference set; covariances normalised by N. Sets with fewer items than
  the feature dimension are refused (their covariance is singular, the figure would mostly measure the
  sample count). Lower is better; a set against itself scores 0.
  """

  feature: str = "i3d_logits"
  name: ClassVar[str] = "fvd"

  @property
  def protocol(self) -> str:
    return f"Frechet distance of I3D {self.feature}, 16 frames at 224x224, covariance / N"

  def value(self, generated: FeatureSet, reference: FeatureSet | None) -> float:
    x, y = _matrix(generated, self.feature, "generated"), _matrix(reference, self.feature, "reference")
    _enough_items(x, "generated", "FVD")
    _enough_items(y, "reference", "FVD")
    return frechet_distance(FeatureMoments.of(x), FeatureMoments.of(y))


@dataclasses.dataclass(frozen=True)
class KVD(_Paired, Metric):
  """Kernel Video Distance: the unbiased MMD^2 of I3D features under k(x, y) = (x.y / D + 1)^3, in subsets.

  Protocol (KVD of Unterthiner et al. 2019, which Make-Your-Video reports, with the subset estimator of
  KID, Bińkowski et al. 2018, as StyleGAN2-ADA computes it): `num_subsets` (100) times, draw
  `subset_size` items (1000, or the smaller set's size) without replacement from the generated set,
  then as many from the reference set, with numpy's `default_rng(seed)`; average the unbiased MMD^2
  estimates. Same features as FVD (I3D logits of 16 frames at 224). Lower is better;
  it can be slightly negative for equal distributions.
  """

  feature: str = "i3d_logits"
  num_subsets: int = 100
  subset_size: int = 1000
  seed: int = 0
  name: ClassVar[str] = "kvd"

  @property
  def protocol(self) -> str:
    return (f"polynomial-kernel MMD^2 of I3D {self.feature}, {self.num_subsets} subsets of <= {self.subset_size}, "
            f"seed {self.seed}")

  def value(self, generated: FeatureSet, reference: FeatureSet | None) -> float:
    x, y = _matrix(generated, self.feature, "generated"), _matrix(reference, self.feature, "reference")
    m = min(len(x), len(y), self.subset_size)
    if m < 2:
      raise InputError("KVD", f"subsets of {m} item(s)", "score at least 2 videos in each set")
    rng = np.random.default_rng(self.seed)
    dim = x.shape[1]
    estimates = []
    for _ in range(self.num_subsets):
      xs = x[rng.choice(len(x), m, replace=False)]
      ys = y[rng.choice(len(y), m, replace=False)]
      kxx, kyy, kxy = ((p @ q.T / dim + 1.0) ** 3 for p, q in ((xs, xs), (ys, ys), (xs, ys)))
      within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
      estimates.append(within - 2.0 * kxy.mean())
    return float(np.mean(estimates))


# --- Per-item metrics: CLIP consistency and depth fidelity -----------------------------------------

class PerItemMetric(Metric):
  """A metric that scores each item; the figure is the mean over items."""

  @abc.abstractmethod
  def per_item(self, generated: FeatureSet, reference: FeatureSet | None = None) -> np.ndarray:
    """(N,) float64 scores, one per generated item."""

  def value(self, generated: FeatureSet, reference: FeatureSet | None) -> float:
    return float(np.mean(self.per_item(generated, reference)))


def _unit(x: np.ndarray, name: str) -> np.ndarray:
  x = np.asarray(x, np.float64)
  norm = np.linalg.norm(x, axis=-1, keepdims=True)
  if not np.isfinite(x).all() or (norm == 0).any():
    raise InputError(name, "holds zero, NaN or infinite embeddings", "check the videos and the CLIP weights")
  return x / norm


def _frames(features: FeatureSet, name: str, min_frames: int) -> np.ndarray:
  x = np.asarray(features[name])
  if x.ndim != 3 or x.shape[1] < min_frames:
    raise InputError(name, f"shape {x.shape}, expected (items, frames >= {min_frames}, dim)",
                     "store one (frames, dim) embedding array per item")
  return _unit(x, name)


@dataclasses.dataclass(frozen=True)
class FrameConsistency(PerItemMetric):
  """CLIP frame (temporal) consistency: mean cosine similarity of consecutive frames' CLIP image embeddings.

  Protocol (Gen-1 Sec. 4, Make-Your-Video's "temporal consistency"): every frame of the output video
  (all T, at its own frame rate) through the CLIP image tower (`clip.preprocess_images`: short side to
  224, centre crop, CLIP normalisation; the projected `image_embeds`), cosine of frames t and t + 1
  averaged over the T - 1 pairs, then over items. 1 is a frozen video; higher is more consistent.
  """

  feature: str = "clip_frames"
  name: ClassVar[str] = "clip_frame_consistency"

  @property
  def needs(self) -> tuple[str, ...]:
    return (self.feature,)

  @property
  def protocol(self) -> str:
    return f"mean cosine of consecutive frames' CLIP image embeddings ({self.feature}), all frames"

  def per_item(self, generated: FeatureSet, reference: FeatureSet | None = None) -> np.ndarray:
    e = _frames(generated, self.feature, 2)
    return np.einsum("ntd,ntd->nt", e[:, 1:], e[:, :-1]).mean(axis=1)


@dataclasses.dataclass(frozen=True)
class PromptConsistency(PerItemMetric):
  """CLIP prompt consistency: mean cosine similarity of each frame's CLIP image embedding to the prompt's.

  Protocol (Gen-1 Sec. 4, Make-Your-Video): the frames' projected CLIP image embeddings (as
  `FrameConsistency`) against the projected CLIP text embedding of the item's prompt (`clip_text`,
  one (D,) row per item, from the same CLIP model), averaged over frames, then over items.
  Higher means the video shows the prompt better.
  """

  feature: str = "clip_frames"
  text_feature: str = "clip_text"
  name: ClassVar[str] = "clip_prompt_consistency"

  @property
  def needs(self) -> tuple[str, ...]:
    return (self.feature, self.text_feature)

  @property
  def protocol(self) -> str:
    return f"mean cosine of CLIP frame embeddings ({self.feature}) to the prompt's ({self.text_feature})"

  def per_item(self, generated: FeatureSet, reference: FeatureSet | None = None) -> np.ndarray:
    frames = _frames(generated, self.feature, 1)
    text = np.asarray(generated[self.text_feature])
    if text.shape != (frames.shape[0], frames.shape[2]):
      raise InputError(self.text_feature, f"shape {text.shape}, expected {(frames.shape[0], frames.shape[2])}",
                       "store one text embedding per item, from the CLIP model of the frame embeddings")
    return np.einsum("ntd,nd->nt", frames, _unit(text, self.text_feature)).mean(axis=1)


def _depth_pairs(generated: FeatureSet, reference: FeatureSet | None, name: str) -> tuple[np.ndarray, np.ndarray]:
  """(N * T, P) float64 depth maps of outputs and of their inputs, flattened per frame."""
  out, ref = np.asarray(generated[name], np.float64), np.asarray(reference[name], np.float64)
  if out.shape != ref.shape or out.ndim != 4:
    raise InputError(name, f"generated {out.shape} and reference {ref.shape} depth maps",
                     "store one (frames, H, W) map per item, the output's and its input's at the same size")
  if not (np.isfinite(out).all() and np.isfinite(ref).all()):
    raise InputError(name, "holds NaN or infinite depth", "check the videos and the depth model")
  return out.reshape(out.shape[0] * out.shape[1], -1), ref.reshape(ref.shape[0] * ref.shape[1], -1)


def _ssi_normalise(d: np.ndarray) -> np.ndarray:
  """Per row: subtract the median, divide by the mean absolute deviation from it (MiDaS' scale-shift alignment)."""
  centred = d - np.median(d, axis=1, keepdims=True)
  scale = np.abs(centred).mean(axis=1, keepdims=True)
  return centred / np.where(scale > 0, scale, 1.0)


_DEPTH_PROTOCOL = ("the output's and the input's depth by the same depth model (vidjax DPT inverse depth, "
                   "every frame at the video's size)")


@dataclasses.dataclass(frozen=True)
class DepthError(_Paired, PerItemMetric):
  """Depth fidelity (ours), error: scale-and-shift-invariant mean absolute error of output depth vs input depth.

  Protocol: each frame's depth map of the output and of the input (`depth`, the same depth model on
  both, e.g. MiDaS DPT's relative inverse depth, which is itself only defined up to scale and shift)
  is normalised as MiDaS' scale-and-shift-invariant loss does (median subtracted, divided by the mean
  absolute deviation), and the mean |difference| over pixels is averaged over frames, then items.
  0 keeps the structure exactly (at any scale and shift); a flat output scores 1 (the normalised input's
  mean |value|); unrelated maps score more (about 1.4 for independent Gaussian noise).
  """

  feature: str = "depth"
  name: ClassVar[str] = "depth_ssi_error"

  @property
  def protocol(self) -> str:
    return "scale-and-shift-invariant MAE (median / mean absolute deviation), " + _DEPTH_PROTOCOL

  def per_item(self, generated: FeatureSet, reference: FeatureSet | None = None) -> np.ndarray:
    out, ref = _depth_pairs(generated, reference, self.feature)
    per_frame = np.abs(_ssi_normalise(out) - _ssi_normalise(ref)).mean(axis=1)
    return per_frame.reshape(len(generated[self.feature]), -1).mean(axis=1)


@dataclasses.dataclass(frozen=True)
class DepthCorrelation(_Paired, PerItemMetric):
  """Depth fidelity (ours), correlation: Pearson correlation of output depth with input depth, per frame.

  Protocol: as `DepthError` (same maps), the correlation over pixels of each frame (invariant to
  scale and shift by construction), averaged over frames, then items. 1 keeps the structure; a frame
  whose map is flat on either side counts 0 (it carries no structure).
  """

  feature: str = "depth"
  name: ClassVar[str] = "depth_correlation"

  @property
  def protocol(self) -> str:
    return "Pearson correlation per frame, " + _DEPTH_PROTOCOL

  def per_item(self, generated: FeatureSet, reference: FeatureSet | None = None) -> np.ndarray:
    out, ref = _depth_pairs(generated, reference, self.feature)
    out, ref = out - out.mean(axis=1, keepdims=True), ref - ref.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1)
    per_frame = np.where(norms > 0, (out * ref).sum(axis=1) / np.where(norms > 0, norms, 1.0), 0.0)
    return per_frame.reshape(len(generated[self.feature]), -1).mean(axis=1)


def retrieval_top1(queries: np.ndarray, keys: np.ndarray, names: Sequence[str] | None = None) -> float:
  """Top-1 retrieval by cosine similarity: the fraction of queries (N, D) whose nearest key (N, D) is their own.

  Query i's own key is key i; with `names` (N,), a retrieved key also counts when its name equals
  query i's (two toy scenes can share a caption, and then either frame is a right answer).
  """
  q, k = _unit(queries, "queries"), _unit(keys, "keys")
  if q.shape != k.shape:
    raise InputError("retrieval", f"{q.shape[0]} queries of width {q.shape[1]} for {k.shape[0]} keys of width "
                     f"{k.shape[1]}", "pass one key per query, embedded in the same space")
  best = np.argmax(q @ k.T, axis=1)
  own = np.arange(len(q))
  right = best == own if names is None else np.asarray(names, object)[best] == np.asarray(names, object)
  return float(np.mean(right))
