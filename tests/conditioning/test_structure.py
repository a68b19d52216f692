"""Structure augmentation (Gen-1's t_s), t_s channels and depth normalisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidjax.conditioning import structure
from vidjax.toyworld import render_clip


@pytest.fixture(scope="module")
def toy_disparity() -> np.ndarray:
  """float32 (4, 64, 64): a toy clip's ground-truth inverse depth, sharp object edges."""
  return render_clip(seed=5, num_frames=4, height=64, width=64).disparity


def mean_squared_laplacian(depth: np.ndarray) -> float:
  """High-frequency energy of (..., H, W) maps (interior 5-point Laplacian)."""
  laplacian = (depth[..., :-2, 1:-1] + depth[..., 2:, 1:-1] + depth[..., 1:-1, :-2]
               + depth[..., 1:-1, 2:] - 4.0 * depth[..., 1:-1, 1:-1])
  return float(np.mean(laplacian**2))


def test_zero_structure_fidelity_keeps_depth(toy_disparity):
  np.testing.assert_array_equal(structure.augment_structure(toy_disparity, 0), toy_disparity)
  out = structure.augment_structure(jnp.asarray(toy_disparity), 0)
  np.testing.assert_array_equal(np.asarray(out), toy_disparity)


def test_detail_decreases_strictly_with_structure_fidelity(toy_disparity):
  energies = [mean_squared_laplacian(structure.augment_structure(toy_disparity, t))
              for t in range(5)]
  assert all(a > b for a, b in zip(energies, energies[1:])), energies
  assert energies[4] < 0.1 * energies[0]


def test_blur_keeps_constant_maps_and_shape():
  flat = np.full((2, 3, 37, 50), 0.25, np.float32)  # odd sizes exercise the edge padding
  for t in (1, 3, 8):
    out = structure.augment_structure(flat, t)
    assert out.shape == flat.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, flat, atol=1e-6)


def test_blur_keeps_structure_in_place():
  """A bright square stays centred where it was (no half-pixel drift per level)."""
  depth = np.zeros((1, 64, 64), np.float32)
  depth[0, 24:40, 24:40] = 1.0
  out = structure.augment_structure(depth, 3)[0]
  rows, cols = np.indices(out.shape)
  centre = (np.sum(rows * out) / out.sum(), np.sum(cols * out) / out.sum())
  np.testing.assert_allclose(centre, (31.5, 31.5), atol=0.05)


@pytest.mark.parametrize("structure_fidelity", [0, 1, 2, 5, 7, 9])
def test_numpy_and_jax_agree(structure_fidelity):
  depth = np.random.default_rng(0).random((2, 3, 29, 40), dtype=np.float32)
  expected = structure.augment_structure(depth, structure_fidelity)
  got = jax.jit(lambda d: structure.augment_structure(d, structure_fidelity))(depth)
  assert isinstance(got, jax.Array)
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-6)


def test_per_sample_structure_fidelity_under_jit_matches_numpy():
  depth = np.random.default_rng(1).random((4, 2, 32, 24), dtype=np.float32)
  values = np.array([0, 3, 7, 1])
  got = jax.jit(structure.augment_structure)(jnp.asarray(depth), jnp.asarray(values))
  for i, t in enumerate(values):
    np.testing.assert_allclose(np.asarray(got[i]), structure.augment_structure(depth[i], int(t)),
                               atol=1e-6)
  np.testing.assert_allclose(structure.augment_structure(depth, values), np.asarray(got),
                             atol=1e-6)


def test_negative_structure_fidelity_is_rejected():
  with pytest.raises(ValueError, match="structure_fidelity"):
    structure.augment_structure(np.zeros((4, 4), np.float32), -1)


def test_structure_fidelity_channels():
  channels = structure.structure_fidelity_channels(3, 5, 7)
  assert channels.shape == (5, 7, 4) and channels.dtype == np.float32
  np.testing.assert_allclose(channels[2, 4], [np.sin(3.0), np.sin(0.03), np.cos(3.0),
                                              np.cos(0.03)], rtol=1e-6)
  assert np.all(channels == channels[:1, :1])  # the same embedding at every pixel
  values = np.arange(8)
  batched = structure.structure_fidelity_channels(values, 2, 3)
  jitted = jax.jit(structure.structure_fidelity_channels, static_argnums=(1, 2))(
      jnp.asarray(values), 2, 3)
  assert batched.shape == (8, 2, 3, 4)
  np.testing.assert_allclose(np.asarray(jitted), batched, atol=1e-6)
  distances = np.linalg.norm(batched[:, None, 0, 0] - batched[None, :, 0, 0], axis=-1)
  assert np.all(distances[~np.eye(8, dtype=bool)] > 0.05)  # every t_s is distinguishable


def test_normalize_depth_per_sample():
  depth = np.stack([np.linspace(2, 3, 24).reshape(2, 3, 4), np.full((2, 3, 4), 5.0)])
  out = structure.normalize_depth(depth)
  assert out.dtype == np.float32
  assert out[0].min() == -1.0 and out[0].max() == 1.0
  np.testing.assert_array_equal(out[1], -1.0)  # flat sample: no division by zero
  np.testing.assert_allclose(np.asarray(structure.normalize_depth(jnp.asarray(depth))), out,
                             atol=1e-6)
