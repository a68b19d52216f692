"""VideoUNet's spatial layers run per frame under nn.vmap over T, with one set of parameters.

The golden file `golden/unet_param_tree.json` pins every param path, shape and logical axis names of
three tiny UNets (image, Gen-1, Make-Your-Video) as they were when frames were folded into the batch
by reshape (commit eca6327), so converted checkpoints keep loading. After an intended change to the
tree, regenerate it with `VIDJAX_UPDATE_GOLDEN=1 pytest tests/models/test_unet_per_frame.py` and
review the diff.
"""

from __future__ import annotations

import json
import os
import pathlib
import re

import flax.linen as nn
import jax
import numpy as np
import pytest

from vidjax.models import layers
from vidjax.models.unet import UNetConfig, VideoUNet, init_inputs

GOLDEN = pathlib.Path(__file__).parent / "golden" / "unet_param_tree.json"
BASE = dict(in_channels=5, block_out_channels=(8, 12), layers_per_block=1, attention_levels=(True, False),
            num_attention_heads=(2, 3), cross_attention_dim=7, norm_num_groups=4)
VARIANTS = {"image": {}, "gen1": dict(temporal_conv="conv1d", temporal_attention=True, temporal_max_frames=3),
            "myv": dict(temporal_conv="pseudo3d", temporal_attention=True, temporal_relative_position=2,
                        temporal_causal=True)}
B, T, H, W = 2, 3, 5, 7  # batch != frames, so a layer's batch size tells per-frame from folded


def _config(variant: str) -> UNetConfig:
  return UNetConfig(**BASE, **VARIANTS[variant])


def _param_tree(config: UNetConfig) -> dict[str, list]:
  """{'down_blocks_0/resnets_0/conv1/kernel': [shape, logical names], ...} from an abstract init."""
  boxed = jax.eval_shape(VideoUNet(config).init, jax.random.key(0), **init_inputs(config, frames=T, height=H, width=W))
  is_boxed = lambda v: isinstance(v, nn.LogicallyPartitioned)
  leaves = jax.tree_util.tree_flatten_with_path(boxed["params"], is_leaf=is_boxed)[0]
  return {jax.tree_util.keystr(path, simple=True, separator="/"): [list(v.value.shape), list(v.names)]
          for path, v in leaves}


def _dumps(tree: dict[str, dict[str, list]]) -> str:
  """JSON with one line per param."""
  variants = []
  for variant, params in sorted(tree.items()):
    rows = ",\n".join(f"  {json.dumps(path)}: {json.dumps(v)}" for path, v in sorted(params.items()))
    variants.append(f" {json.dumps(variant)}: {{\n{rows}\n }}")
  return "{\n" + ",\n".join(variants) + "\n}\n"


def test_param_tree_is_the_folded_models():
  tree = {variant: _param_tree(_config(variant)) for variant in VARIANTS}
  if os.environ.get("VIDJAX_UPDATE_GOLDEN") == "1":
    GOLDEN.write_text(_dumps(tree))
  golden = json.loads(GOLDEN.read_text())
  for variant in VARIANTS:
    now, then = tree[variant], golden[variant]
    changed = {k: (then.get(k), now.get(k)) for k in then.keys() | now.keys() if then.get(k) != now.get(k)}
    assert not changed, f"{variant}: (golden, now) per param; see the module docstring to regenerate: {changed}"


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((B, T, H, W, 5)).astype(np.float32), np.array([17, 803], np.int32),
          rng.standard_normal((B, 4, 7)).astype(np.float32))


def _perturbed_params(config: UNetConfig):
  """Random params with non-zero temporal layers (their output projections start at zero)."""
  params = nn.unbox(jax.jit(VideoUNet(config).init)(jax.random.key(0), *_inputs()))["params"]
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree_util.tree_unflatten(treedef, [v + 0.05 * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)])


@pytest.mark.parametrize("variant", ["gen1", "myv"])
def test_layers_see_one_frame_of_every_video_or_the_whole_clip(variant):
  """Spatial layers are called on (B, h, w, C) frames (mapped over T), temporal layers on (B, T, h, w, C) videos."""
  config = _config(variant)
  seen = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, (nn.Conv, nn.GroupNorm)) and context.method_name == "__call__":
      seen.append(("/".join(context.module.scope.path), args[0].shape))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):  # shapes only: traced abstractly, nothing runs
    jax.eval_shape(lambda *a: VideoUNet(config).init_with_output(jax.random.key(0), *a, temporal_window=2), *_inputs())
  spatial = {path: shape for path, shape in seen if "temporal_" not in path}
  temporal = {path: shape for path, shape in seen if "temporal_" in path}
  assert "conv_in" in spatial and "up_blocks_0/upsamplers_0/conv" in spatial and temporal
  assert all(len(shape) == 4 and shape[0] == B for shape in spatial.values()), spatial
  # (B, T, h, w, C), or T + 2 frames where a temporal conv's input is replicate-padded in time.
  assert all(len(shape) == 5 and shape[0] == B and shape[1] in (T, T + 2) for shape in temporal.values()), temporal


@pytest.mark.slow  # three UNet compiles per variant; test_unet's fresh-video-model test covers converted weights fast
@pytest.mark.parametrize("variant", ["gen1", "myv"])
def test_video_mode_without_temporal_layers_is_image_mode_on_each_frame(variant):
  """Zeroing the temporal layers' output projections turns video mode into the image model frame by frame."""
  config = _config(variant)
  params = _perturbed_params(config)
  latents, t, context = _inputs()
  apply = jax.jit(VideoUNet(config).apply, static_argnames=("image_mode",))
  moved = apply({"params": params}, latents, t, context, temporal_window=2)
  last_layers = re.compile(r"temporal_conv[12]/|temporal_conv/conv_last/|temporal_attentions_\d+/proj_out/")
  silence = lambda path, v: np.zeros_like(v) if last_layers.search(jax.tree_util.keystr(path, simple=True,
                                                                                         separator="/")) else v
  silent = jax.tree_util.tree_map_with_path(silence, params)
  video = apply({"params": silent}, latents, t, context, temporal_window=2)
  frames = [apply({"params": params}, latents[:, i:i + 1], t, context, image_mode=True) for i in range(T)]
  np.testing.assert_allclose(np.asarray(video), np.concatenate(frames, axis=1), atol=1e-5, rtol=0)
  assert np.abs(np.asarray(moved) - np.asarray(video)).max() > 1e-3  # the temporal layers did act


def test_per_frame_maps_frames_and_shares_per_video_inputs():
  """layers.per_frame: frame t of each video with its own (B, ...) inputs, one kernel for all frames."""

  def frame_fn(module, frame, per_video):
    return layers.dense(3, name="proj")(frame) + per_video[:, None, :]

  class Probe(nn.Module):
    @nn.compact
    def __call__(self, video, per_video):
      return layers.per_frame(frame_fn, self, video, shared=(per_video,))

  video = np.random.default_rng(0).standard_normal((B, T, 4, 2)).astype(np.float32)
  per_video = np.arange(B * 3, dtype=np.float32).reshape(B, 3)
  variables = Probe().init(jax.random.key(0), video, per_video)
  assert jax.tree_util.tree_map(np.shape, nn.unbox(variables))["params"] == {"proj": {"bias": (3,), "kernel": (2, 3)}}
  kernel, bias = (np.asarray(nn.unbox(variables)["params"]["proj"][k]) for k in ("kernel", "bias"))
  np.testing.assert_allclose(np.asarray(Probe().apply(variables, video, per_video)),
                             video @ kernel + bias + per_video[:, None, None, :], atol=1e-6)
