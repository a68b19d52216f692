"""The embedded default evaluation: the toy checkpoint's recolouring edits of held-out toy scenes.

  vidjax evaluate --config configs/eval/toy.py --workdir runs/eval_toy

Nothing is downloaded: the toy world renders `num_items` held-out scenes (seeds from 1000000, outside
the training seeds), the embedded checkpoint (`vidjax/assets/toy`) edits each one (its depth, a caption
with new colours), and the toy metrics score them (`vidjax.eval.toy_metrics`: silhouette IoU, colour
accuracy, frame consistency). Features are cached per item under <workdir>/features, so a killed job
restarted with the same workdir computes only the missing items; the figures go to
<workdir>/results.json. Expected on the shared 2-core CPU machine: 10 to 15 s per item, and at the
defaults the figures of `vidjax eval-toy-edit --num_clips 8` (same scenes, steps and guidance).
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.protocol = "toy"
  config.checkpoint = ""  # a VideoEditPipeline checkpoint directory; empty: the embedded toy checkpoint
  config.num_items = 8
  config.first_seed = 1_000_000  # toy_edit's benchmark seeds
  config.num_frames, config.size, config.stride = 8, 64, 2  # the toy training clips'
  config.num_inference_steps = 25
  config.guidance_scale = ml_collections.config_dict.placeholder(float)  # None: the checkpoint's default
  return config
