"""Helpers for PyTorch-oracle tests: tiny configs, seeded perturbation of every weight, tensor conversion."""

from __future__ import annotations

import numpy as np
import torch

# Odd, prime-ish sizes: 5 input channels (SD-2-depth), different head dims per level (8, 6, 8),
# cross-attention width 13; latents like 13x11 that the stride-2 convs round up.
TINY_UNET = dict(
    sample_size=16, in_channels=5, out_channels=4, block_out_channels=(16, 24, 32), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(2, 4, 4), cross_attention_dim=13, norm_num_groups=8, use_linear_projection=True)
TINY_VAE = dict(in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
                norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2)


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
