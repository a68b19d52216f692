"""Gen-1 stage 2: adds the temporal layers (zero-initialised outputs: the model starts equal to stage 1 frame by frame) and trains jointly on videos and images (12.5% image batches), 75k steps.

  vidjax train --config configs/gen1_stage2.py --workdir <dir> --config.data.data_dir=<shards> \
      --config.init_from=<see below>

Expected: the loss falls from its first smoothed value within the first thousand steps; samples in
TensorBoard (samples/ema) follow the content image.
"""

from __future__ import annotations

from configs import gen1


def get_config():
  config = gen1.get_config(stage=2)
  config.init_from = ""  # set: --config.init_from=<stage 1 workdir>
  return config
