"""Base config: every field the trainer reads, with Stable-Diffusion-2-depth-sized defaults.

Experiments import this and change a few fields (see toy.py, gen1_*.py, make_your_video.py).
Run one with
  vidjax train --config configs/<experiment>.py --workdir <dir> [--config.train.lr=1e-4 ...]
"""

from __future__ import annotations

import dataclasses

import ml_collections

from vidjax.data.loader import default_loader_config
from vidjax.models.unet import UNetConfig
from vidjax.parallel import sharding


def unet_fields(**overrides) -> ml_collections.ConfigDict:
  """vidjax.models.unet.UNetConfig's fields at its defaults (SD-2 depth: 4 latent + 1 depth channels),
  with `overrides`: the dataclass is the one place a default is spelled."""
  return ml_collections.ConfigDict({**{f.name: f.default for f in dataclasses.fields(UNetConfig)}, **overrides})


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.init_from = ""  # weights only: a vidjax pretrained dir (vidjax convert) or a training workdir
  # init_from params matching these regexes (over '/'-joined paths) keep their fresh init: e.g. new
  # temporal layers on a video checkpoint's spatial ones, as Make-Your-Video adds them to SD-2-depth.
  config.init_exclude = ()
  config.init_surgery = ()  # applied to init_from weights: 'widen_input_channels', 'change_context_width'

  config.model = ml_collections.ConfigDict()
  config.model.unet = unet_fields()
  config.model.vae = ml_collections.ConfigDict(dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                                    latent_channels=4, norm_num_groups=32, scaling_factor=0.18215))
  # CLIP text tower fields (vidjax.models.clip.CLIPTextConfig); OpenCLIP ViT-H text as in SD-2.
  config.model.text_encoder = ml_collections.ConfigDict(dict(
      vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
      max_position_embeddings=77, hidden_act="gelu", projection_dim=None, eos_token_id=2))
  # CLIP vision tower fields (vidjax.models.clip.CLIPVisionConfig) for content 'image': OpenAI ViT-L/14.
  config.model.image_encoder = ml_collections.ConfigDict(dict(
      hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24, image_size=224,
      patch_size=14, hidden_act="quick_gelu", projection_dim=768))
  # 'depth' (SD-2-depth, Make-Your-Video) | 'depth_pixels' | 'depth_latent' (Gen-1) | 'none'
  config.model.structure = "depth"
  config.model.content = "text"  # 'text' | 'image' (CLIP image embeddings, Gen-1)
  config.model.prediction_type = "v_prediction"
  config.model.beta_schedule = "scaled_linear"

  config.data = default_loader_config()

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 100_000
  config.train.lr = 1e-4
  config.train.warmup_steps = 1000
  config.train.lr_schedule = "constant"  # 'constant' | 'cosine'
  config.train.end_lr_fraction = 0.0
  config.train.b1, config.train.b2, config.train.eps = 0.9, 0.999, 1e-8
  config.train.weight_decay = 0.01
  config.train.grad_clip = 1.0
  config.train.grad_accum_steps = 1
  config.train.ema_decay = 0.9999
  config.train.content_dropout = 0.1  # drop the caption / image embedding for classifier-free guidance
  config.train.structure_dropout = 0.0
  config.train.min_snr_gamma = 0.0  # 0 = off; 5 is the usual value
  config.train.object_loss_weight = 0.0  # w > 0: object latent cells count 1 + w (needs shards with masks)
  config.train.trainable = ("unet/.*",)  # regexes over '/'-joined param paths
  config.train.nonfinite = "stop"  # 'stop' (message, last good checkpoint intact) | 'skip' the step

  config.mesh = ml_collections.ConfigDict()
  config.mesh.shape = ml_collections.ConfigDict(dict(data=-1, fsdp=1, sequence=1))
  config.mesh.rules = sharding.DEFAULT_RULES  # logical axis -> mesh axes
  config.mesh.num_devices = 0  # use the first N devices; 0 = all

  config.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, async_save=True))
  config.log = ml_collections.ConfigDict(dict(every_steps=50, sample_every_steps=5000, sample_num_inference_steps=25,
                                              peak_tflops_per_device=0.0,
                                              data_trace=False))  # per-step batch fingerprints (debugging, tests)
  return config
