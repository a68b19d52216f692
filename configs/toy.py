"""The embedded default: Make-Your-Video's recipe on the toy world, trained on CPU.

  vidjax train --config configs/toy.py --workdir runs/toy

Builds 512 toy clips (8 frames at stride 2, 64x64, ground-truth depth, object masks) and the toy
tokenizer into the workdir. The embedded checkpoint (vidjax/assets/toy) stands in for SD-2-depth:
its VAE, CLIP text tower and spatial UNet layers load frozen (structure 'depth_pixels': depth at the
latent size plus each latent cell's 4x4 depth pixels), and the UNet gets fresh temporal layers
(causal temporal attention with relative positions, Gen-1's 1D temporal convs), the only params
that train (300 steps; the objects' latent cells weigh more through the masks). Finally it scores
the model on the toy recolouring benchmark's held-out scenes (their depth, captions with new
colours), printing IoU and colour accuracy, and writes the first edit to <workdir>/edit.mp4.
Measured (README): 397 s with the install on a quiet 2-core Zen 3 (454 s on a loaded Zen 5); IoU 0.708, colour 81.8 %.
The former recipe (a VAE and a UNet from scratch in 850 steps) took 42 min on a Zen 3 and ended
in a blur: too few CPU steps to learn what the depth means.
"""

from __future__ import annotations

import json
import os

import ml_collections

from configs import base
from vidjax import toyworld

SIZE, FRAMES = 64, 8


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  tokenizer = toyworld.build_tokenizer()

  config.data.build = ml_collections.ConfigDict(dict(source="toy", num_examples=512, seed=0, num_frames=FRAMES,
                                                     stride=2, size=SIZE, examples_per_shard=64, num_workers=1,
                                                     with_masks=True))
  config.data.batch_size = 4
  config.data.max_caption_tokens = 24  # the longest caption (3 objects) is 20 tokens with bos/eos
  # t_s = 0 only, as SD-2-depth and Make-Your-Video train. 1-channel depth has no t_s channels, so with
  # t_s ~ U{0..3} (Gen-1's blur) the model cannot tell sharp depth from blurred depth and paints
  # objects as blobs the size of the blur: toy recolouring IoU 0.20 after 4254 steps at 0..3, then
  # 0.31 after 2000 more at 0. A model that should trade structure for freedom needs
  # structure 'depth_latent', which carries Gen-1's t_s channels.
  config.data.structure_fidelity_min, config.data.structure_fidelity_max = 0, 0

  # 8 latent channels (SD uses 4 at factor 8): at factor 4 and 64x64, 4 channels blur the small objects'
  # colours into their neighbours' (a 4-channel VAE's round trip names 30% of object colours right).
  # The decoder is wider and deeper than the encoder: it runs once per edit, and the small one's blur
  # capped the toy recolouring IoU (the round trip of ideal outputs: 0.747 with (16, 32, 32) x 2
  # resnets, 0.769 with this one after 4000 decoder-only steps on the same encoder).
  config.model.vae = ml_collections.ConfigDict(dict(block_out_channels=(16, 32, 32), layers_per_block=1,
                                                    latent_channels=8, norm_num_groups=8, scaling_factor=1.0,
                                                    decoder_block_out_channels=(32, 64, 64),
                                                    decoder_layers_per_block=2))
  config.model.text_encoder = ml_collections.ConfigDict(dict(
      vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
      max_position_embeddings=24, hidden_act="gelu", projection_dim=None, eos_token_id=tokenizer.eos_token_id))
  # Depth at the latent's 16x16 plus each cell's 4x4 depth pixels: objects are a few latent cells
  # wide, and the coarse depth alone left their silhouettes rounded.
  config.model.structure = "depth_pixels"
  config.model.unet = base.unet_fields(
      in_channels=8 + 1 + 16, out_channels=8, block_out_channels=(32, 64, 96), layers_per_block=1,
      attention_levels=(False, True, True), num_attention_heads=(1, 2, 3), cross_attention_dim=64, norm_num_groups=8,
      temporal_conv="conv1d", temporal_attention=True, temporal_relative_position=FRAMES, temporal_causal=True)

  # Make-Your-Video's recipe on the toy world: the embedded checkpoint stands in for SD-2-depth. Its
  # VAE, text tower and spatial UNet layers load frozen; the temporal layers start fresh (their zero
  # output projections make the model the per-frame image model at step 0) and are the only params
  # that train. The VAE stage is off: its latents are the checkpoint's, at its scaling factor.
  config.init_from = toyworld.CHECKPOINT
  config.init_exclude = ("unet/.*temporal_.*",)
  with open(os.path.join(toyworld.CHECKPOINT, "config.json")) as f:  # its latents' scale, read, not copied
    config.model.vae.scaling_factor = json.load(f)["components"]["vae"]["config"]["scaling_factor"]
  config.vae_stage = ml_collections.ConfigDict(dict(num_steps=0, lr=1e-3, warmup_steps=20, kl_weight=1e-6,
                                                    batch_size=2, scale_batches=4, object_loss_weight=10.0,
                                                    object_loss_margin=2, trainable=("vae/.*",), init_from=""))
  config.train.num_steps = 300
  config.train.lr = 1e-3
  config.train.warmup_steps = 20
  config.train.lr_schedule = "cosine"
  config.train.ema_decay = 0.95
  # Objects cover ~6% of a frame; without extra weight the loss is mostly floor texture and sky, and
  # the model learns the objects' colours last (the shards carry masks for this: with_masks above).
  config.train.object_loss_weight = 3.0
  config.train.min_snr_gamma = 5.0
  config.train.trainable = ("unet/.*temporal_.*",)
  config.checkpoint.every_steps = 100
  config.log.every_steps = 20
  config.log.sample_every_steps = 300
  config.log.sample_num_inference_steps = 25  # as final_edit: one compiled sampling loop
  # The run ends on the toy recolouring benchmark (`vidjax eval-toy-edit`'s cases) over a few held-out
  # scenes, at the embedded checkpoint's sampling defaults.
  config.final_edit = ml_collections.ConfigDict(dict(enabled=True, num_clips=6, num_inference_steps=25,
                                                     guidance_scale=1.5, temporal_guidance_scale=1.0))
  return config
