"""Gen-1 (Esser et al.), shared by its four training stages (configs/gen1_stage{1,2,3,4}.py).

A Stable-Diffusion-sized latent UNet conditioned on the CLIP ViT-L/14 image embedding of a random
frame (content) and, from stage 3, on VAE-encoded MiDaS depth plus four sinusoidal t_s channels
(structure); temporal 1D convs after every spatial conv and temporal attention with learned
frame-index embeddings after every spatial transformer; v-parameterisation; 8 frames at stride 4.
The stages change a few fields of `get_config(stage)`; each stage starts from the previous one's
workdir through `init_from`.
"""

from __future__ import annotations

import ml_collections

from configs import base

FRAMES = 8
# (height, width) of Gen-1's image batches (Sec. 3.4: 320x320, 384x320, 448x256 and the flipped
# aspects, written there width x height like its 448x256 videos); one per batch, drawn from (seed, step).
# Multiples of SD's size multiple 64 (VAE factor 8 x UNet downsampling 8).
IMAGE_BUCKETS = ((320, 320), (320, 384), (384, 320), (256, 448), (448, 256))


def get_config(stage: int = 1) -> ml_collections.ConfigDict:
  config = base.get_config()
  config.model.content = "image"
  config.model.structure = "none" if stage < 3 else "depth_latent"
  config.model.unet = base.unet_fields(
      in_channels=4 if stage < 3 else 4 + 4 + 4, cross_attention_dim=768, num_attention_heads=(8, 8, 8, 8),
      temporal_conv="none" if stage < 2 else "conv1d", temporal_attention=stage >= 2, temporal_max_frames=FRAMES)
  config.model.prediction_type = "v_prediction"
  config.data.data_dir = ""  # shards from data_pipelines/build_shards.py with --depth dpt (MiDaS DPT-Large)
  config.data.batch_size = 8
  config.data.image_fraction = 1.0 if stage == 1 else 0.125  # stage 1: images only
  config.data.image_buckets = IMAGE_BUCKETS
  config.data.structure_fidelity_min = 0
  config.data.structure_fidelity_max = 7 if stage == 4 else 0  # t_s = 0 in stage 3, U{0..7} in stage 4
  config.train.trainable = ("unet/.*",)  # VAE and CLIP stay frozen
  config.train.num_steps = {1: 15_000, 2: 75_000, 3: 25_000, 4: 10_000}[stage]
  config.train.lr = 1e-5
  config.train.warmup_steps = 1000 if stage == 1 else 100
  config.train.content_dropout = 0.1
  config.mesh.shape = ml_collections.ConfigDict(dict(data=-1, fsdp=8, sequence=1))
  return config
