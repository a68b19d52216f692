"""Surgery: change_context_width re-initialises exactly the spatial cross-attention key/value kernels."""

from __future__ import annotations

import jax
import numpy as np

from vidjax.train import surgery
from vidjax.tree import flatten


def _unet_params(width):
  rng = np.random.default_rng(0)
  attn2 = lambda: {"to_q": {"kernel": rng.standard_normal((8, 8))}, "to_k": {"kernel": rng.standard_normal((width, 8))},
                   "to_v": {"kernel": rng.standard_normal((width, 8))},
                   "to_out_0": {"kernel": rng.standard_normal((8, 8)), "bias": np.zeros(8)}}
  return {"conv_in": {"kernel": rng.standard_normal((3, 3, 4, 8))},
          "down_blocks_0": {"attentions_0": {"blocks_0": {"attn2": attn2(), "attn1": attn2()}},
                            "temporal_attentions_0": {"blocks_0": {"attn2": attn2()}}}}


def test_change_context_width_reinitialises_only_spatial_cross_attention_keys_and_values():
  before = _unet_params(7)
  after = flatten(surgery.change_context_width(before, 11, jax.random.key(0), scale=0.02))
  before = flatten(before)
  changed = {p for p in before if np.shape(before[p]) != np.shape(after[p]) or not np.array_equal(before[p], after[p])}
  spatial = ("down_blocks_0", "attentions_0", "blocks_0", "attn2")
  assert changed == {spatial + ("to_k", "kernel"), spatial + ("to_v", "kernel")}
  for name in ("to_k", "to_v"):
    kernel = np.asarray(after[spatial + (name, "kernel")])
    assert kernel.shape == (11, 8)  # the new content width in, the layer's width out
    assert 0.01 < kernel.std() < 0.03 and abs(kernel.mean()) < 0.01  # drawn at `scale`, not zeros or copies
  assert not np.array_equal(after[spatial + ("to_k", "kernel")], after[spatial + ("to_v", "kernel")])
  # Self-attention (attn1) and temporal layers keep their width: they never read the content.
  assert np.shape(after[("down_blocks_0", "temporal_attentions_0", "blocks_0", "attn2", "to_k", "kernel")]) == (7, 8)
