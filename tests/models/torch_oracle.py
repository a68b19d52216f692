"""Helpers for PyTorch-oracle tests: seeded perturbation of every weight, tensor conversion."""

from __future__ import annotations

import numpy as np
import torch


def perturb_(module: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
  """Adds seeded noise to every parameter, so zero/one inits cannot hide a wrong mapping."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.add_(scale * torch.randn(p.shape, generator=gen))
  return module.eval()


def to_torch_nchw(x: np.ndarray) -> torch.Tensor:
  """(N, H, W, C) -> (N, C, H, W) float32 tensor."""
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))).float()


def from_torch_nchw(x: torch.Tensor) -> np.ndarray:
  return np.moveaxis(x.detach().numpy(), 1, -1)
