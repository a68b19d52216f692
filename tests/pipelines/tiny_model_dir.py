"""Tiny random whole-model checkpoint directories for the edit pipeline's tests.

Params are drawn with numpy from the shapes `pretrained.param_shapes` gives, so no model init is
compiled (XLA takes tens of seconds for a UNet's random-number code on CPU).
"""

from __future__ import annotations

import os

import jax
import numpy as np

from vidjax import toyworld
from vidjax.convert import pretrained
from vidjax.models.clip import CLIPTextConfig, CLIPVisionConfig
from vidjax.models.prior import PriorConfig
from vidjax.models.unet import UNetConfig
from vidjax.models.vae import VAEConfig

FRAMES, SIZE = 4, 32
UNET = dict(in_channels=5, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
            attention_levels=(False, True), num_attention_heads=(1, 2), cross_attention_dim=16, norm_num_groups=4,
            temporal_conv="conv1d", temporal_attention=True, temporal_relative_position=FRAMES, temporal_causal=True)
VAE = dict(block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4, scaling_factor=1.0)
PRIOR_EMBED_NORM = 3.0  # the content scale of the tiny prior's samples (its manifest's image_embed_norm)


def _random(shapes, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (rng.standard_normal(s.shape) * 0.1).astype(np.float32), shapes)


def write(folder: str | os.PathLike, *, content: str = "text", seed: int = 0, structure: str = "depth_1ch",
          structure_fidelity_range=(0, 2), sampling_defaults: dict | None = None, prior: bool = False) -> str:
  """A tiny text (toy tokenizer) or image-embedding model directory with 'depth_1ch' structure (SD-2-depth's)
  or 'depth_latent' (Gen-1's: the VAE's depth latents and 4 t_s channels); returns its path. `prior`: an
  image-embedding model with Gen-1's prior, its text tower (with a projection) and the toy tokenizer."""
  folder = os.fspath(folder)
  structure_channels = {"depth_1ch": 1, "depth_latent": VAE["latent_channels"] + 4}[structure]
  unet = UNetConfig(**{**UNET, "in_channels": VAE["latent_channels"] + structure_channels})
  vae = VAEConfig(**VAE)
  components = {"unet": (unet, _random(pretrained.param_shapes(unet), seed)),
                "vae": (vae, _random(pretrained.param_shapes(vae), seed + 1))}
  assets = {}
  extra = {}
  if content == "text" or prior:
    tokenizer = toyworld.save_tokenizer(os.path.join(folder + ".tokenizer"))
    text = CLIPTextConfig(vocab_size=len(toyworld.build_tokenizer()), hidden_size=16, intermediate_size=32,
                          num_attention_heads=2, num_hidden_layers=1, max_position_embeddings=24,
                          hidden_act="gelu", projection_dim=16 if prior else None, eos_token_id=2)
    components["text_encoder"] = (text, _random(pretrained.param_shapes(text), seed + 2))
    assets["tokenizer"] = tokenizer
  if prior:
    config = PriorConfig(embed_dim=16, text_width=16, max_text_tokens=24, width=12, depth=1, heads=3, ff_mult=2,
                         num_train_timesteps=100)
    components["prior"] = (config, _random(pretrained.param_shapes(config), seed + 4))
    extra["prior"] = {"image_embed_norm": PRIOR_EMBED_NORM}
  if content != "text":
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                              image_size=32, patch_size=8, hidden_act="quick_gelu", projection_dim=16)
    components["image_encoder"] = (vision, _random(pretrained.param_shapes(vision), seed + 3))
  extra = {**extra, "scheduler": {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                         "beta_end": 0.012, "prediction_type": "v_prediction", "timestep_spacing": "leading",
                         "steps_offset": 1, "set_alpha_to_one": False},
           "conditioning": {"structure": structure, "content": "text_tokens" if content == "text" else "image_embeds"},
           "video": {"num_frames": FRAMES, "temporal_window": None, "stride": 1, "size": [SIZE, SIZE]},
           "training": {"structure_fidelity_range": list(structure_fidelity_range)}}
  if sampling_defaults is not None:
    extra["sampling_defaults"] = sampling_defaults
  return pretrained.save_pretrained(folder, components, extra=extra, assets=assets)
