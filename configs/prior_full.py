"""Gen-1's prior at DALL-E 2's size, for OpenAI CLIP ViT-L/14 embeddings (768): not run here.

  vidjax train --config configs/prior_full.py --workdir runs/prior_full \
      --config.prior_stage.clip_from=<checkpoint dir of {'text_encoder', 'image_encoder'}> \
      --config.data.data_dir=<captioned shards> --config.data.tokenizer_dir=<CLIP tokenizer folder>

The prior stage only (`train.num_steps` 0), DALL-E 2's diffusion prior (Ramesh et al. 2022, Table 3):
width 2048, 24 blocks, 32 heads, 1000 cosine timesteps, 64 sampling steps, batch 4096 for 600K
steps, AdamW at 1.1e-4 (beta2 0.96, eps 1e-10, weight decay 0.06), EMA 0.9999, over the 77 text tokens
of the frozen ViT-L/14 text tower plus 4 positions. Gen-1's content encoder is that CLIP's vision
tower (configs/gen1.py's `model.image_encoder`).

Expected cost (vidjax.models.prior.prior_flops, matmul FLOPs):
  1.02 B params (24 x 10 x 2048^2 in the blocks: the GEGLU at ff_mult 2 holds a 4x MLP's weights less 2 x 2048^2);
  0.67 PFLOP per forward of a 4096 batch, 2.0 PFLOP per training step (3 x forward), 1.2e21 FLOP for
  600K steps; the frozen towers add 0.08 (text) + 0.64 (vision) PFLOP per step unless their embeddings
  are cached beside the shards. At 40 % MFU of an H100's 989 dense bf16 TFLOP/s that is 5.1 s per
  step per GPU, about 850 H100-hours with cached embeddings (about 1150 without).
"""

from __future__ import annotations

import ml_collections

from configs import gen1, prior_toy


def get_config() -> ml_collections.ConfigDict:
  config = gen1.get_config(1)
  config.data.max_caption_tokens = 77
  config.data.image_fraction = 1.0  # the prior embeds one frame per clip: images are clips of one
  # OpenAI CLIP ViT-L/14's text tower (HF CLIPTextConfig), the tower the prior reads frozen.
  config.clip_stage = ml_collections.ConfigDict(dict(num_steps=0, text_encoder=ml_collections.ConfigDict(dict(
      vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
      max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, eos_token_id=2))))
  config.prior_stage = prior_toy.prior_stage_config(
      num_steps=600_000, lr=1.1e-4, warmup_steps=10_000, weight_decay=0.06, batch_size=4096, ema_decay=0.9999,
      eval_scenes=0, guidance_scale=1.0, num_inference_steps=64,
      prior=dict(width=2048, depth=24, heads=32, ff_mult=2, num_train_timesteps=1000,
                 beta_schedule="squaredcos_cap_v2", text_drop_prob=0.1))
  config.train.b2, config.train.eps = 0.96, 1e-10  # the prior stage's AdamW reads them from train
  config.train.num_steps = 0  # the prior stage only
  return config
