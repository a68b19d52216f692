"""Gen-1 stage 3: adds structure: VAE-encoded depth + 4 t_s channels concatenated to the latent, with zero weights for the new input channels; t_s fixed at 0, 25k steps.

  vidjax train --config configs/gen1_stage3.py --workdir <dir> --config.data.data_dir=<shards> \
      --config.init_from=<see below>

Expected: the loss falls from its first smoothed value within the first thousand steps; samples in
TensorBoard (samples/ema) follow the content image and the input depth.
"""

from __future__ import annotations

from configs import gen1


def get_config():
  config = gen1.get_config(stage=3)
  config.init_from = ""  # set: --config.init_from=<stage 2 workdir>
  config.init_surgery = ("widen_input_channels",)
  return config
