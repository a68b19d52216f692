"""Any folder of generated videos against any folder of reference videos: FVD and KVD on I3D features.

  vidjax convert i3d i3d_pretrained_400.pt weights/i3d          # once: the Kinetics-400 I3D (TATS / cd-fvd)
  vidjax evaluate --config configs/eval/folder.py --workdir runs/eval_folder \\
      --config.generated_dir=samples/ --config.reference_dir=real/ --config.i3d_dir=weights/i3d \\
      [--config.clip_dir=weights/clip]                          # + CLIP frame consistency of the generated videos

Every video file under each folder (recursively) is one item: its first `num_frames` frames (every
`stride`-th) go through I3D at `i3d_size` (the FVD protocol: 16 frames, 224 x 224, `i3d.preprocess_videos`),
a batch of `batch_size` clips at a time split over `num_devices` local devices (0: all). Features are
cached per item under <workdir>/features (a restart computes only the missing ones). A folder with
fewer readable videos than the FVD feature dimension (400 logits) is refused; an unreadable video is
skipped and listed with its reason (exit 3). CLIP weights: `vidjax convert clip <transformers CLIP folder> DIR`.
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.protocol = "folder"
  config.generated_dir = ""  # required: the videos to score
  config.reference_dir = ""  # required: the real videos
  config.i3d_dir = ""  # required: `vidjax convert i3d ...` output
  config.clip_dir = ""  # optional: `vidjax convert clip ...` output (an image_encoder with a projection)
  config.num_frames, config.stride = 16, 1  # the FVD protocol's 16 consecutive frames
  config.i3d_size = 224
  config.fvd_feature = "i3d_logits"  # StyleGAN-V's / cd-fvd's layer; 'i3d_pooled' for the 1024-d pool
  config.kvd_subsets, config.kvd_subset_size = 100, 1000
  config.batch_size = 8  # clips per sharded I3D run (rounded up to a multiple of the devices)
  config.num_devices = 0  # local devices to split each batch over; 0: all
  return config
