"""I3D parity against the PyTorch `InceptionI3d` that cd-fvd ships (the FVD oracle), at seeded random weights.

The oracle is `cdfvd/third_party/i3d/pytorch_i3d.py` (piergiaj's port); install it with
`pip install --no-deps cd-fvd==0.1.1` (its torchvision dependency does not install beside our torch, and
the two modules used here do not need it).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from torch_oracle import perturb_
from vidjax.convert import i3d as convert_i3d
from vidjax.errors import ConfigError, InputError
from vidjax.models import i3d

pytorch_i3d = pytest.importorskip("cdfvd.third_party.i3d.pytorch_i3d",
                                  reason="the oracle: pip install --no-deps cd-fvd==0.1.1")
i3d_utils = pytest.importorskip("cdfvd.third_party.i3d.utils", reason="the oracle: pip install --no-deps cd-fvd==0.1.1")

TOL = 1e-4


def _random_i3d(num_classes: int = 400, seed: int = 0) -> torch.nn.Module:
  """The PyTorch I3D with every weight and batch-norm statistic perturbed, so no identity init hides a mapping."""
  torch.manual_seed(seed)
  model = perturb_(pytorch_i3d.InceptionI3d(num_classes, in_channels=3), seed=seed + 1, scale=0.05)
  gen = torch.Generator().manual_seed(seed + 2)
  with torch.no_grad():
    for name, buffer in model.named_buffers():
      if name.endswith("running_mean"):
        buffer.copy_(0.1 * torch.randn(buffer.shape, generator=gen))
      elif name.endswith("running_var"):
        buffer.copy_(0.5 + torch.rand(buffer.shape, generator=gen))
  return model


def _state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def models():
  model = _random_i3d()
  params, report = convert_i3d.convert_i3d(_state_dict(model))
  return model, params, report


def _torch_features(model, videos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(logits, pooled) of the port: its forward's logits, and `extract_features` averaged (one pass for both)."""
  x = torch.from_numpy(np.ascontiguousarray(videos.transpose(0, 4, 1, 2, 3)))
  with torch.no_grad():
    pooled_map = model.avg_pool(model.extract_pre_pool_features(x))  # (B, 1024, T', 1, 1)
    logits = model.logits(model.dropout(pooled_map)).squeeze(3).squeeze(3).mean(dim=2)  # as forward()
  return logits.numpy(), pooled_map.mean(dim=(2, 3, 4)).numpy()


def _relative(ours, theirs) -> float:
  return float(np.abs(np.asarray(ours) - theirs).max() / np.abs(theirs).max())


# The protocol's 16 frames at the smallest size the final 2x7x7 pool takes; then a non-square clip
# of the fewest frames (odd sizes exercise the 'same' paddings' extra end pixel).
@pytest.mark.parametrize("shape", [(1, 16, 193, 193, 3), (1, 9, 201, 193, 3)])
def test_matches_pytorch_inception_i3d(models, shape):
  model, params, report = models
  assert not report.missing and all(k.endswith("num_batches_tracked") for k in report.unexpected)
  videos = np.random.default_rng(0).uniform(-1, 1, size=shape).astype(np.float32)
  ours = i3d.i3d_features(i3d.I3DConfig(), params, videos)
  logits, pooled = _torch_features(model, videos)
  assert ours["logits"].shape == (1, 400) and ours["pooled"].shape == (1, i3d.FEATURE_DIM)
  assert _relative(ours["logits"], logits) <= TOL
  assert _relative(ours["pooled"], pooled) <= TOL
  assert np.abs(logits).max() > 1.0  # the comparison is between non-trivial outputs


def test_load_from_torch_and_safetensors_files(tmp_path):
  model = _random_i3d(num_classes=7, seed=3)
  torch.save(model.state_dict(), tmp_path / "i3d.pt")
  save_file({k: v for k, v in _state_dict(model).items() if not k.endswith("num_batches_tracked")},
            tmp_path / "i3d.safetensors")
  config, from_torch, report = convert_i3d.load_i3d(tmp_path / "i3d.pt")
  assert config.num_classes == 7 and len(report.unexpected) == 57  # one counter per batch norm
  _, from_safetensors, report = convert_i3d.load_i3d(tmp_path / "i3d.safetensors")
  assert not report.unexpected
  for a, b in zip(jax.tree.leaves(from_torch), jax.tree.leaves(from_safetensors)):
    np.testing.assert_array_equal(a, b)
  # Kernels are transposed to (taps, in, out): the 7x7x7 stem's (64, 3, 7, 7, 7) -> (7, 7, 7, 3, 64).
  stem = model.state_dict()["Conv3d_1a_7x7.conv3d.weight"].numpy()
  np.testing.assert_array_equal(from_torch["Conv3d_1a_7x7"]["conv3d"]["kernel"], stem.transpose(2, 3, 4, 1, 0))
  np.testing.assert_array_equal(from_torch["Mixed_5c"]["b2a"]["bn"]["var"],
                                model.state_dict()["Mixed_5c.b2a.bn.running_var"].numpy())


def test_converter_refuses_what_does_not_fit(models):
  model = models[0]
  state = _state_dict(model)
  wrong = dict(state, **{"Mixed_4c.b1b.conv3d.weight": state["Mixed_4c.b1b.conv3d.weight"][:, :-1]})
  with pytest.raises(ConfigError, match=r"shape mismatches: Mixed_4c\.b1b\.conv3d\.weight"):
    convert_i3d.convert_i3d(wrong)
  partial = {k: v for k, v in state.items() if k != "Mixed_3b.b0.bn.running_mean"}
  with pytest.raises(ConfigError, match="Mixed_3b/b0/bn/mean"):
    convert_i3d.convert_i3d(partial)
  with pytest.raises(ConfigError, match="no place: extra.weight"):
    convert_i3d.convert_i3d(dict(state, **{"extra.weight": np.zeros(3, np.float32)}))
  with pytest.raises(InputError, match="not found"):
    convert_i3d.load_i3d("/nonexistent/i3d.pt")


def test_preprocess_matches_cd_fvd_and_refuses_short_clips():
  rng = np.random.default_rng(0)
  for shape in [(2, 17, 45, 61, 3), (1, 16, 300, 250, 3)]:  # upsampled (non-square) and downsampled
    videos = rng.integers(0, 256, size=shape, dtype=np.uint8)
    ours = np.asarray(i3d.preprocess_videos(videos))
    theirs = i3d_utils.preprocess_i3d(videos[:, :16]).numpy().transpose(0, 2, 3, 4, 1)  # (B, C, T, H, W) -> ours
    assert ours.shape == (shape[0], 16, 224, 224, 3)
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
  assert -1.0 <= ours.min() and ours.max() <= 1.0
  with pytest.raises(InputError, match="15 frames, the protocol takes 16"):
    i3d.preprocess_videos(np.zeros((1, 15, 64, 64, 3), np.uint8))
  with pytest.raises(InputError, match="uint8"):
    i3d.preprocess_videos(np.zeros((1, 16, 64, 64, 3), np.float32))
  with pytest.raises(InputError, match=f"at least {i3d.MIN_FRAMES} frames of {i3d.MIN_SIZE}x{i3d.MIN_SIZE}"):
    i3d.I3D().init(jax.random.key(0), np.zeros((1, 16, 192, 224, 3), np.float32))
