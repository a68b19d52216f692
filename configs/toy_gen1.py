"""Gen-1's content on the toy world: a toy CLIP, then the embedded checkpoint re-trained on CLIP image embeddings.

  vidjax train --config configs/toy_gen1.py --workdir runs/toy_gen1

1. Builds 2048 toy clips (the embedded checkpoint's training scenes) and the toy tokenizer.
2. The CLIP stage: a toy CLIP (text and vision towers, `vidjax.models.clip`) trained contrastively
   on (caption, random frame) pairs, then scored by caption -> frame retrieval on held-out scenes.
3. Gen-1's stage 1 on a video model: the embedded checkpoint's UNet (spatial and temporal layers)
   and VAE, its cross-attention keys and values re-made for the image embedding
   (`change_context_width`, as Gen-1 moves SD from text tokens to CLIP image embeddings), trained
   with the frozen toy CLIP's embedding of a random frame of each clip as the content.
4. The toy recolouring benchmark with reference images instead of captions (`final_edit.content`
   'image': each held-out scene recoloured and rendered later in its camera path).
The measured figures are in vidjax/assets/toy_gen1/README.md, the checkpoint this config made.
"""

from __future__ import annotations

import ml_collections

from configs import toy
from vidjax import toyworld


def get_config() -> ml_collections.ConfigDict:
  config = toy.get_config()
  tokenizer = toyworld.build_tokenizer()
  config.data.build.num_examples = 2048

  # A ViT over 8x8 patches of the 64x64 frames; its 64-wide projection is the UNet's context width.
  config.model.content = "image"
  config.model.image_encoder = ml_collections.ConfigDict(dict(
      hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3, image_size=toy.SIZE,
      patch_size=8, hidden_act="quick_gelu", projection_dim=64))
  config.clip_stage = ml_collections.ConfigDict(dict(
      num_steps=2000, lr=1e-3, warmup_steps=100, weight_decay=0.1, batch_size=128, retrieval_scenes=200,
      text_encoder=ml_collections.ConfigDict(dict(
          vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_attention_heads=4,
          num_hidden_layers=2, max_position_embeddings=24, hidden_act="gelu", projection_dim=64,
          eos_token_id=tokenizer.eos_token_id))))

  # The whole UNet trains from the embedded checkpoint (its text tower is not part of this model).
  config.init_exclude = ()
  config.init_surgery = ("change_context_width",)
  config.train.trainable = ("unet/.*",)
  config.train.num_steps = 2500
  config.train.lr = 3e-4
  config.train.warmup_steps = 50
  config.train.ema_decay = 0.99
  config.checkpoint.every_steps = 250
  config.log.sample_every_steps = 2500
  return config
