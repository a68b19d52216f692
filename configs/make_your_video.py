"""Make-Your-Video (Xing et al.): frozen Stable-Diffusion-2-depth spatial layers, trained temporal modules.

  vidjax convert sd2-depth <stable-diffusion-2-depth folder> weights/sd2_depth
  vidjax train --config configs/make_your_video.py --workdir <dir> --config.init_from=weights/sd2_depth \
      --config.data.data_dir=<WebVid shards: 16 frames at stride 4, 256x256, MiDaS DPT-Hybrid depth> \
      --config.data.tokenizer_dir=weights/sd2_depth/tokenizer

Text (OpenCLIP ViT-H tokens) through cross-attention, per-frame depth as a 5th input channel;
pseudo-3D residual blocks and temporal transformers with relative positions and the causal mask
(window L_M = 16 in training; longer at inference). Only 'unet/*temporal_*' params train (the paper:
50k steps at lr 1e-4, batch 512 with DeepSpeed). Expected: spatial params bitwise unchanged, the loss
falls from its first smoothed value; temporal consistency of samples improves over the image model's.
"""

from __future__ import annotations

from configs import base

FRAMES = 16


def get_config():
  config = base.get_config()
  config.model.unet = base.unet_fields(temporal_conv="pseudo3d", temporal_attention=True,
                                       temporal_relative_position=FRAMES, temporal_causal=True, remat=True)
  config.model.structure = "depth"
  config.model.content = "text"
  config.model.prediction_type = "epsilon"  # SD-2-depth predicts eps
  config.data.batch_size = 8
  config.data.image_fraction = 0.0
  config.data.max_caption_tokens = 77
  config.data.structure_fidelity_min = config.data.structure_fidelity_max = 0
  config.train.trainable = ("unet/.*temporal_.*",)
  config.train.num_steps = 50_000
  config.train.lr = 1e-4
  config.train.content_dropout = 0.1
  config.mesh.shape.update(data=-1, fsdp=8)
  return config
