"""Gen-1 stage 4: t_s drawn uniformly from 0..7 (blur + downsample of the depth), 10k steps: structure fidelity becomes a knob at inference.

  vidjax train --config configs/gen1_stage4.py --workdir <dir> --config.data.data_dir=<shards> \
      --config.init_from=<see below>

Expected: the loss falls from its first smoothed value within the first thousand steps; samples in
TensorBoard (samples/ema) follow the content image and the input depth.
"""

from __future__ import annotations

from configs import gen1


def get_config():
  config = gen1.get_config(stage=4)
  config.init_from = ""  # set: --config.init_from=<stage 3 workdir>
  return config
