"""Gen-1 stage 1: images only: the text-to-image LDM switched to CLIP image embeddings (15k steps). init_from: an SD checkpoint converted with 'vidjax convert unet/vae' into one pretrained dir; change_context_width re-initialises cross-attention keys/values for the 768-wide image embedding.

  vidjax train --config configs/gen1_stage1.py --workdir <dir> --config.data.data_dir=<shards> \
      --config.init_from=<see below>

Expected: the loss falls from its first smoothed value within the first thousand steps; samples in
TensorBoard (samples/ema) follow the content image.
"""

from __future__ import annotations

from configs import gen1


def get_config():
  config = gen1.get_config(stage=1)
  config.init_from = ""  # set: --config.init_from=<converted SD dir>
  config.init_surgery = ("change_context_width",)
  return config
