"""The one resampler: torch's F.interpolate to float32 rounding, for numpy and jax arrays alike."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import torch_oracle
from vidjax import interpolate


@pytest.mark.parametrize("method,align_corners,sizes", [
    ("bilinear", False, ((4, 7), (9, 5))), ("bilinear", True, ((3, 5), (6, 10))),
    ("bicubic", False, ((6, 5), (13, 3))), ("bicubic", False, ((13, 11), (4, 4)))])
def test_interpolation_matches_torch(method, align_corners, sizes):
  (h, w), out = sizes
  x = np.random.default_rng(0).standard_normal((2, h, w, 3)).astype(np.float32)
  ref = torch_oracle.from_torch_nchw(torch.nn.functional.interpolate(
      torch_oracle.to_torch_nchw(x), size=out, mode=method, align_corners=align_corners))
  for given in (x, jnp.asarray(x)):
    ours = interpolate.resize(given, out, method=method, align_corners=align_corners)
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-5, rtol=0)


def test_answers_in_kind_on_any_axes():
  x = np.random.default_rng(1).random((3, 5, 7)).astype(np.float32)  # (N, H, W): spatial axes last
  on_numpy = interpolate.resize(x, (10, 4), axes=(-2, -1))
  on_jax = jax.jit(lambda a: interpolate.resize(a, (10, 4), axes=(-2, -1)))(jnp.asarray(x))
  assert type(on_numpy) is np.ndarray and on_numpy.dtype == np.float32 and on_numpy.shape == (3, 10, 4)
  assert isinstance(on_jax, jax.Array)
  np.testing.assert_allclose(on_numpy, np.asarray(on_jax), atol=1e-6, rtol=0)
  # Channels-last with the default axes gives the same maps.
  np.testing.assert_allclose(interpolate.resize(x[..., None], (10, 4))[..., 0], on_numpy, atol=0, rtol=0)
  assert interpolate.resize(x, (5, 7), axes=(-2, -1)) is x  # nothing to resample: the input itself
