"""Analytic FLOP count of a VideoUNet forward pass, for model TFLOP/s and MFU.

Counts matmul-like work only, as 2 x multiply-accumulates: convolutions, dense layers, attention's
QK^T and PV (plus the relative-position key and value terms of Make-Your-Video's temporal attention).
Elementwise work (norms, activations, softmax, residual adds, biases, embeddings' sin/cos) is left
out: it is memory-bound, a few percent of the total, and MFU conventionally counts only matmul FLOPs.

Zero-padded convolutions count only the kernel taps that read inside the input, as XLA's
`cost_analysis()` does: taps that land on padding multiply zeros, which is not model work. At an
8x8 level a padded 3x3 conv has (22/24)^2 = 84% of the naive 2*H*W*9*Cin*Cout. Temporal convs pad by
replicating edge frames, so all their taps count.

The walk mirrors `VideoUNet.__call__` (same levels, skips and sizes) and counts what the model
executes, including work repeated per frame (cross-attention keys/values of the repeated context,
the time-embedding projection of the repeated timestep embedding).
"""

from __future__ import annotations

import dataclasses

from vidjax.models.unet import UNetConfig


def _valid_taps(size: int, kernel: int, stride: int, pad: int) -> tuple[int, int]:
  """(output size, number of (output, tap) pairs reading inside the input) along one zero-padded axis."""
  out = (size + 2 * pad - kernel) // stride + 1
  taps = sum(1 for o in range(out) for k in range(kernel) if 0 <= o * stride - pad + k < size)
  return out, taps


@dataclasses.dataclass(frozen=True)
class _Counter:
  """FLOPs of the UNet's building blocks for one call; `n` = batch * frames images (spatial layers run per frame)."""

  config: UNetConfig
  batch: int
  frames: int
  context_length: int
  temporal: bool  # temporal layers run (video mode of a model that has them)
  banded: bool = False  # temporal attention runs as a CausalBand of C-frame blocks (T > C, a window given)

  @property
  def n(self) -> int:
    return self.batch * self.frames

  def conv(self, hw: tuple[int, int], cin: int, cout: int, kernel: int = 3, stride: int = 1):
    """A zero-padded (kernel // 2) 2D conv on n images of size hw -> (flops, output hw)."""
    (out_h, taps_h), (out_w, taps_w) = (_valid_taps(s, kernel, stride, kernel // 2) for s in hw)
    return 2 * self.n * taps_h * taps_w * cin * cout, (out_h, out_w)

  def resnet(self, hw: tuple[int, int], cin: int, cout: int) -> int:
    """ResnetBlock: two 3x3 convs, time-embedding projection, 1x1 shortcut, temporal convs."""
    pixels = self.n * hw[0] * hw[1]
    flops = self.conv(hw, cin, cout)[0] + self.conv(hw, cout, cout)[0]
    flops += 2 * self.n * 4 * self.config.block_out_channels[0] * cout
    if cin != cout:
      flops += self.conv(hw, cin, cout, kernel=1)[0]
    if self.temporal and self.config.temporal_conv == "conv1d":  # two (3, 1, 1) convs, T taps x 3
      flops += 2 * 2 * pixels * 3 * cout * cout
    if self.temporal and self.config.temporal_conv == "pseudo3d":  # four (3, 1, 1) convs and one (1, 3, 3)
      flops += 4 * 2 * pixels * 3 * cout * cout + self.conv(hw, cout, cout)[0]
    return flops

  def block(self, sequences: int, length: int, c: int, cross_length: int, relative: bool, band: int = 0) -> int:
    """TransformerBlock on (sequences, length, c): two attentions and the GEGLU feed-forward.

    The second attention is cross-attention to `cross_length` context tokens when cross_length > 0,
    else a second self-attention (temporal blocks). Relative positions add two more (L, L) products.
    With `band` = C > 0 the self-attentions are block-local: ceil(L / C) blocks of C queries (the
    last zero-padded) against 2C keys each, (ceil(L / C) C, 2C) products in place of (L, L).
    """
    tokens = sequences * length
    queries, keys = (-(-length // band) * band, 2 * band) if band else (length, length)
    core = 2 * 2 * sequences * queries * keys * c * (2 if relative else 1)
    flops = 4 * 2 * tokens * c * c + core  # attn1: q, k, v, out projections; QK^T and PV
    if cross_length:
      context_tokens = sequences * cross_length
      flops += 2 * 2 * tokens * c * c + 2 * 2 * context_tokens * self.config.cross_attention_dim * c
      flops += 2 * 2 * sequences * length * cross_length * c
    else:
      flops += 4 * 2 * tokens * c * c + core
    return flops + 2 * tokens * c * 8 * c + 2 * tokens * 4 * c * c  # GEGLU proj to 2 x 4c, then 4c -> c

  def attend(self, hw: tuple[int, int], c: int) -> int:
    """SpatialTransformer (+ TemporalTransformer in video mode) at one resolution."""
    cfg = self.config
    length = hw[0] * hw[1]
    projections = 2 * 2 * self.n * length * c * c  # proj_in and proj_out
    flops = projections + cfg.transformer_depth * self.block(self.n, length, c, self.context_length, False)
    if self.temporal and cfg.temporal_attention:
      relative = cfg.temporal_relative_position > 0
      band = cfg.temporal_relative_position if self.banded else 0
      flops += projections + cfg.transformer_depth * self.block(self.batch * length, self.frames, c, 0, relative, band)
    return flops


def unet_forward_flops(config: UNetConfig, *, batch: int, frames: int, height: int, width: int,
                       context_length: int, image_mode: bool = False, temporal_window: int | None = None) -> int:
  """Matmul FLOPs (2 x MACs) of one `VideoUNet(config).apply` on these input sizes.

  Args:
    config: the UNet architecture.
    batch, frames, height, width: latents are (batch, frames, height, width, in_channels).
    context_length: L of the (batch, L, cross_attention_dim) context.
    image_mode: temporal layers skipped (as the `image_mode` call argument); models without
      temporal layers count the same either way.
    temporal_window: the causal window L_M passed to the UNet, if any: with relative positions and
      more frames than their distance C, temporal attention runs block-local (`CausalBand`), linear
      in the frame count, and is counted so.
  Returns:
    The FLOP count (a Python int).
  """
  banded = bool(config.temporal_causal and config.temporal_relative_position and temporal_window is not None
                and frames > config.temporal_relative_position)
  count = _Counter(config, batch, frames, context_length, config.has_temporal and not image_mode, banded)
  channels = config.block_out_channels
  levels = len(channels)
  flops = 2 * batch * channels[0] * 4 * channels[0] + 2 * batch * (4 * channels[0]) ** 2  # time MLP
  hw = (height, width)
  conv_in, _ = count.conv(hw, config.in_channels, channels[0])
  flops += conv_in
  skips = [(channels[0], hw)]  # (channels, size) of every skip, in the order VideoUNet stores them
  c = channels[0]
  for level in range(levels):
    for _ in range(config.layers_per_block):
      flops += count.resnet(hw, c, channels[level])
      c = channels[level]
      if config.attention_levels[level]:
        flops += count.attend(hw, c)
      skips.append((c, hw))
    if level < levels - 1:
      down, hw = count.conv(hw, c, c, stride=2)
      flops += down
      skips.append((c, hw))
  flops += 2 * count.resnet(hw, c, c) + count.attend(hw, c)  # mid block (always attends)
  for level in reversed(range(levels)):
    for skip_channels, _ in reversed(skips[-(config.layers_per_block + 1):]):
      flops += count.resnet(hw, c + skip_channels, channels[level])
      c = channels[level]
      if config.attention_levels[level]:
        flops += count.attend(hw, c)
    del skips[-(config.layers_per_block + 1):]
    if level > 0:
      hw = skips[-1][1]  # nearest upsample to the next skip's size, then a 3x3 conv there
      flops += count.conv(hw, c, c)[0]
  return flops + count.conv(hw, c, config.out_channels)[0]


def unet_train_flops(config: UNetConfig, *, batch: int, frames: int, height: int, width: int,
                     context_length: int, image_mode: bool = False, temporal_window: int | None = None) -> int:
  """Matmul FLOPs of a training step's forward + backward: 3 x `unet_forward_flops`.

  The backward pass of every matmul computes two products of the forward's size: the gradient
  w.r.t. its input (dY W^T) and w.r.t. its weight (X^T dY); for QK^T and PV both operands are
  activations, again two products. Forward + backward is therefore 3x the forward. This is the
  model-FLOPs convention of MFU: rematerialisation (`config.remat`) recomputes the forward (hardware
  FLOPs ~4x) without counting here, and the few skipped products (no input gradient for `conv_in`,
  no weight gradients for frozen layers) are ignored.
  """
  return 3 * unet_forward_flops(config, batch=batch, frames=frames, height=height, width=width,
                                context_length=context_length, image_mode=image_mode, temporal_window=temporal_window)
