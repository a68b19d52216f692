"""The metrics against reference computations and on inputs whose answer is known."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage

from vidjax.errors import ConfigError, InputError
from vidjax.eval import features, metrics
from vidjax.models import clip, i3d

REL = 1e-6
CD_FVD = "the oracle: pip install --no-deps cd-fvd==0.1.1"


def _gaussian_features(rng, count: int, dim: int, shift: float = 0.0) -> np.ndarray:
  """Correlated, anisotropic features (like logits), so a covariance mistake cannot cancel out.

  One distribution per (dim, shift): the mixing matrix has a fixed seed, `rng` draws the samples.
  """
  mixing = np.random.default_rng(dim).normal(size=(dim, dim)) / np.sqrt(dim)
  return (rng.normal(size=(count, dim)) * np.linspace(0.5, 3.0, dim)) @ mixing + shift


def _reference_fvd(x: np.ndarray, y: np.ndarray) -> float:
  """cd-fvd's `compute_fvd_from_stats` on its own `FeatureStats` (StyleGAN-V's formula), written out."""
  metric_utils = pytest.importorskip("cdfvd.utils.metric_utils", reason=CD_FVD)
  stats = []
  for features in (x, y):
    s = metric_utils.FeatureStats(capture_mean_cov=True)
    s.append(features)
    stats.append(s.get_mean_cov())
  (mu_fake, sigma_fake), (mu_real, sigma_real) = stats
  m = np.square(mu_real - mu_fake).sum()
  s, _ = scipy.linalg.sqrtm(np.dot(sigma_real, sigma_fake), disp=False)
  return float(np.real(m + np.trace(sigma_fake + sigma_real - s * 2)))


def _reference_kvd(x: np.ndarray, y: np.ndarray, num_subsets: int, subset_size: int, seed: int) -> float:
  """KID as StyleGAN2-ADA's kernel_inception_distance computes it (x generated, y real), same subset draws."""
  rng = np.random.default_rng(seed)
  n = x.shape[1]
  m = min(min(x.shape[0], y.shape[0]), subset_size)
  t = 0
  for _ in range(num_subsets):
    a_idx = rng.choice(x.shape[0], m, replace=False)
    b_idx = rng.choice(y.shape[0], m, replace=False)
    xs, ys = x[a_idx], y[b_idx]
    a = (xs @ xs.T / n + 1) ** 3 + (ys @ ys.T / n + 1) ** 3
    b = (xs @ ys.T / n + 1) ** 3
    t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
  return float(t / num_subsets / m)


def test_fvd_and_kvd_equal_the_reference_formulas():
  rng = np.random.default_rng(0)
  x = _gaussian_features(rng, 300, 40).astype(np.float32)
  y = _gaussian_features(rng, 257, 40, shift=0.3).astype(np.float32)
  fvd = metrics.FVD(feature="f")({"f": x}, {"f": y})
  reference = _reference_fvd(x, y)
  assert fvd.metric == "fvd" and fvd.count == 300 and reference > 1.0
  assert abs(fvd.value - reference) <= REL * reference
  for subset_size in (1000, 100):  # whole sets (one permutation), then true subsets
    kvd = metrics.KVD(feature="f", num_subsets=7, subset_size=subset_size, seed=3)({"f": x}, {"f": y})
    reference = _reference_kvd(x.astype(np.float64), y.astype(np.float64), 7, subset_size, seed=3)
    assert reference > 0.01 and abs(kvd.value - reference) <= REL * reference
  # Moments gathered in pieces (as hosts would) give the same distance.
  pieces = [metrics.FeatureMoments.of(x[i:i + 64]) for i in range(0, len(x), 64)]
  merged = pieces[0]
  for piece in pieces[1:]:
    merged = merged.merge(piece)
  assert merged.count == 300
  assert abs(metrics.frechet_distance(merged, metrics.FeatureMoments.of(y)) - fvd.value) <= REL * fvd.value


def test_fvd_of_a_set_against_itself_is_zero_and_refuses_too_few_videos():
  rng = np.random.default_rng(1)
  x = _gaussian_features(rng, 64, 48)
  same = metrics.FVD(feature="f")({"f": x}, {"f": x[::-1]})
  assert abs(same.value) < 1e-9 * np.trace(np.cov(x.T))
  # KVD's unbiased estimate is ~0 for two samples of one distribution, far from 0 for a shifted one.
  y, shifted = _gaussian_features(rng, 64, 48), _gaussian_features(rng, 64, 48, shift=1.0)
  kvd = metrics.KVD(feature="f", num_subsets=5)
  assert abs(kvd({"f": x}, {"f": y}).value) < 0.1 * kvd({"f": x}, {"f": shifted}).value
  with pytest.raises(InputError, match="generated videos.*47 items are too few.*at least 48 videos"):
    metrics.FVD(feature="f")({"f": x[:47]}, {"f": x})
  with pytest.raises(InputError, match="reference videos.*at least 48"):
    metrics.FVD(feature="f")({"f": x}, {"f": x[:20]})
  with pytest.raises(InputError, match=r"lack \['i3d_logits'\]"):
    metrics.FVD()({"f": x}, {"f": x})
  with pytest.raises(InputError, match="needs reference features"):
    metrics.KVD(feature="f")({"f": x})


def _smooth_videos(rng, count: int, frames: int = 9, size: int = 40) -> np.ndarray:
  """uint8 (N, T, S, S, 3): drifting low-frequency colour fields, different per video."""
  t, yy, xx = np.meshgrid(np.arange(frames), np.arange(size), np.arange(size), indexing="ij")
  out = []
  for _ in range(count):
    k, phase, speed = rng.uniform(0.1, 0.5, size=(3, 2)), rng.uniform(0, 6.3, size=3), rng.uniform(0.5, 2, size=2)
    channels = [np.sin(k[c % 3, 0] * (xx - speed[0] * t) + k[(c + 1) % 3, 1] * yy + phase[c]) for c in range(3)]
    checker = ((xx // 4 + yy // 4) % 2) * rng.uniform(0.3, 0.8)  # fine detail for the blur to remove
    out.append(np.clip(127 + 80 * np.stack(channels, -1) + 60 * (checker[..., None] - 0.25), 0, 255))
  return np.asarray(out, np.uint8)


def test_fvd_grows_monotonically_with_blur():
  """Tiny random-weight I3D (channels / 8, 13 classes): blurrier test sets drift further from the reference."""
  config = i3d.I3DConfig(num_classes=13, channel_divisor=8)
  params = i3d.init_params(config, seed=0)
  rng = np.random.default_rng(0)
  reference, test = _smooth_videos(rng, 16), _smooth_videos(rng, 16)
  extract = lambda v: features.i3d_video_features(config, params, v, num_frames=9, size=i3d.MIN_SIZE, batch_size=16)
  reference_features = extract(reference)
  scores = []
  for sigma in (0.0, 1.0, 2.0, 4.0):
    blurred = np.stack([scipy.ndimage.gaussian_filter(v.astype(np.float32), (0, sigma, sigma, 0)) for v in test])
    scores.append(metrics.FVD()(extract(np.round(blurred).astype(np.uint8)), reference_features).value)
  assert all(a < b for a, b in zip(scores, scores[1:])), scores
  assert scores[-1] > 2 * scores[0], scores


def _tiny_clip_vision():
  config = clip.CLIPVisionConfig(hidden_size=24, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                                 image_size=30, patch_size=6, projection_dim=11)
  params = clip.CLIPVisionTransformer(config).init(jax.random.key(0), np.zeros((1, 30, 30, 3), np.float32))
  return config, nn.unbox(params)["params"]


def test_frame_consistency_is_one_for_a_still_video_and_drops_when_shuffled():
  config, params = _tiny_clip_vision()
  rng = np.random.default_rng(2)
  moving = _smooth_videos(rng, 3, frames=8, size=30)
  still = np.repeat(moving[:, :1], 8, axis=1)
  shuffled = moving[:, rng.permutation(8)]
  metric = metrics.FrameConsistency()
  scores = {name: metric.per_item(features.clip_frame_features(config, params, v))
            for name, v in (("moving", moving), ("still", still), ("shuffled", shuffled))}
  np.testing.assert_allclose(scores["still"], 1.0, atol=1e-6)
  assert (scores["moving"] < 1.0 - 1e-4).all()
  assert scores["shuffled"].mean() < scores["moving"].mean()
  figure = metric(features.clip_frame_features(config, params, moving))
  assert figure.count == 3 and figure.value == pytest.approx(scores["moving"].mean())


def test_prompt_consistency_is_the_mean_cosine_to_the_text_embedding():
  rng = np.random.default_rng(3)
  text = rng.normal(size=(2, 5))
  frames = np.stack([np.stack([3 * text[0], 0.5 * text[0], text[0]]),  # all aligned: 1
                     np.stack([text[1], -text[1], 2 * text[1]])])  # cosines 1, -1, 1: 1/3
  scores = metrics.PromptConsistency().per_item({"clip_frames": frames, "clip_text": text})
  np.testing.assert_allclose(scores, [1.0, 1.0 / 3.0], atol=1e-12)
  orthogonal = metrics.PromptConsistency()({"clip_frames": np.eye(3)[None, 1:], "clip_text": np.eye(3)[:1]})
  assert orthogonal.value == pytest.approx(0.0, abs=1e-12)
  with pytest.raises(InputError, match="clip_text"):
    metrics.PromptConsistency()({"clip_frames": frames, "clip_text": text[:, :4]})


def _depth_scene(rng, frames: int = 4, size: int = 24) -> np.ndarray:
  yy, xx = np.mgrid[:size, :size] / size
  return np.stack([0.2 + yy + 0.5 * np.sin(6 * xx + t) + 0.05 * rng.normal(size=(size, size)) for t in range(frames)])


def test_depth_fidelity_is_invariant_to_scale_and_shift_and_penalises_other_structure():
  rng = np.random.default_rng(4)
  inputs = np.stack([_depth_scene(rng), _depth_scene(rng)])
  ref = {"depth": inputs}
  error, correlation = metrics.DepthError(), metrics.DepthCorrelation()
  rescaled = {"depth": 3.0 * inputs + 7.0}
  np.testing.assert_allclose(error.per_item(rescaled, ref), 0.0, atol=1e-12)
  np.testing.assert_allclose(correlation.per_item(rescaled, ref), 1.0, atol=1e-12)
  flipped = {"depth": inputs[:, :, ::-1]}  # the structure upside down
  flat = {"depth": np.ones_like(inputs)}
  noise = {"depth": rng.normal(size=inputs.shape)}
  assert 0.3 < error(flipped, ref).value < error(noise, ref).value
  np.testing.assert_allclose(error.per_item(flat, ref), 1.0, atol=1e-12)
  np.testing.assert_allclose(correlation.per_item(flat, ref), 0.0)
  assert correlation(flipped, ref).value < 0.5 and abs(correlation(noise, ref).value) < 0.1
  # Through the feature function: an estimator that sees the video's brightness as depth.
  videos = np.clip(inputs[..., None] * 100, 0, 255).astype(np.uint8).repeat(3, axis=-1)
  depth = features.depth_features(lambda v: v.mean(axis=-1) / 255.0, videos)
  assert depth["depth"].shape == inputs.shape
  assert correlation(depth, ref).value > 0.99
  with pytest.raises(InputError, match="depth maps"):
    error({"depth": inputs[:, :3]}, ref)


def test_features_sharded_over_eight_devices_equal_one_device():
  """The data-parallel feature runs (batch split over the mesh) give one device's features, and so its figures."""
  assert len(jax.local_devices()) == 8  # conftest's fake CPU devices
  config = i3d.I3DConfig(num_classes=13, channel_divisor=8)
  params = i3d.init_params(config, seed=0)
  videos = _smooth_videos(np.random.default_rng(5), 11)  # 11 clips: the last batch of 8 is padded
  runs = {n: features.i3d_video_features(config, params, videos, num_frames=9, size=i3d.MIN_SIZE, batch_size=8,
                                         mesh=features.data_mesh(n)) for n in (1, 0)}
  assert features.data_mesh(0).devices.size == 8 and features.data_mesh(1).devices.size == 1
  for name in ("i3d_logits", "i3d_pooled"):
    assert runs[1][name].shape[0] == 11
    np.testing.assert_allclose(runs[0][name], runs[1][name], rtol=1e-5, atol=1e-6 * np.abs(runs[1][name]).max())
  half = {n: {"i3d_logits": r["i3d_logits"][:6]} for n, r in runs.items()}
  rest = {n: {"i3d_logits": r["i3d_logits"][6:]} for n, r in runs.items()}
  kvd = metrics.KVD(num_subsets=5)
  assert kvd(half[0], rest[0]).value == pytest.approx(kvd(half[1], rest[1]).value, rel=1e-4)
  vision, vision_params = _tiny_clip_vision()
  frames = _smooth_videos(np.random.default_rng(6), 3, frames=5, size=30)
  one, eight = (features.clip_frame_features(vision, vision_params, frames, batch_size=6, mesh=features.data_mesh(n))
                for n in (1, 0))
  assert eight["clip_frames"].shape == (3, 5, 11)
  np.testing.assert_allclose(eight["clip_frames"], one["clip_frames"], rtol=1e-5, atol=1e-6)
  with pytest.raises(ConfigError, match="outside 0..8"):
    features.data_mesh(9)


def test_retrieval_top1_counts_queries_whose_nearest_key_is_their_own():
  rng = np.random.default_rng(0)
  keys = rng.standard_normal((6, 5))
  assert metrics.retrieval_top1(keys * 3.0, keys) == 1.0  # cosine: the scale does not matter
  shifted = np.roll(keys, 1, axis=0)  # query i's nearest key is key i - 1
  assert metrics.retrieval_top1(shifted, keys) == 0.0
  queries = keys.copy()
  queries[[0, 1]] = keys[[1, 0]]  # two queries swapped: 4 of 6 right
  assert metrics.retrieval_top1(queries, keys) == pytest.approx(4 / 6)
  # Items sharing a name are interchangeable answers (two scenes with one caption).
  assert metrics.retrieval_top1(queries, keys, names=["a", "a", "b", "c", "d", "e"]) == 1.0
  with pytest.raises(InputError, match="one key per query"):
    metrics.retrieval_top1(keys[:4], keys)
