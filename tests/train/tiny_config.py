"""A tiny training config for the trainer's tests: small shards, models and steps."""

from __future__ import annotations

import ml_collections

from configs import toy


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  config = toy.get_config()
  config.data.build.update(num_examples=16, num_frames=4, stride=1, size=16, examples_per_shard=8, num_workers=1)
  config.data.batch_size = 8
  config.data.image_fraction = 0.0
  config.data.prefetch_batches = 0
  config.model.vae.update(block_out_channels=(8, 8), norm_num_groups=4, latent_channels=4,
                          decoder_block_out_channels=(8, 12), decoder_layers_per_block=1)
  config.model.text_encoder.update(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1)
  config.model.structure = "depth"  # 'depth_pixels' has its own test in test_train_step
  # Attention at the second level (and the mid block) only. XLA's CPU compile time grows with the
  # number of arrays (init draws, Adam and EMA are per array), and the first level's attention blocks
  # held over a third of them: the state had 2565 arrays, now 1646.
  config.model.unet = toy.base.unet_fields(
      in_channels=5, block_out_channels=(8, 16), layers_per_block=1, attention_levels=(False, True),
      num_attention_heads=(2, 2), cross_attention_dim=16, norm_num_groups=4, temporal_conv="conv1d",
      temporal_attention=True, temporal_relative_position=4, temporal_causal=True)
  config.vae_stage.num_steps = 0
  config.final_edit.enabled = False
  # Trained from scratch, everything but the VAE: the toy job's start from the embedded checkpoint
  # (frozen spatial layers) has its own test, test_toy_recipe.py.
  config.init_from, config.init_exclude = "", ()
  config.model.vae.scaling_factor = 1.0
  config.train.trainable = ("unet/.*", "text_encoder/.*")
  config.train.ema_decay = 0.99
  # Constant after the warmup: a cosine schedule bakes num_steps into the compiled train step, so runs
  # of different lengths (the loop tests run 2 to 10 steps) would each compile their own (~100 s on 2 cores);
  # with it every run of one mesh shares a program through the persistent compilation cache
  # (tests/conftest.py). The step still enters through the RNG (fold_in) and Adam's count, so a
  # resume that lost it would still change the params.
  config.train.update(num_steps=6, warmup_steps=2, lr=1e-3, lr_schedule="constant")
  config.checkpoint.update(every_steps=2, keep=10, async_save=False)
  config.log.update(every_steps=2, sample_every_steps=0)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


# For the training loop's mechanics (kill and resume, meshes, NaN stop, two processes), which no layer
# type changes: without temporal attention the state has 854 arrays instead of 1646, so its init and
# step compile faster and each checkpoint save takes about half the time.
LOOP_MODEL = {"model.unet.temporal_attention": False}


def get_config() -> ml_collections.ConfigDict:
  """For subprocess runs: `vidjax train --config tests/train/tiny_config.py`."""
  return tiny_config()
