"""Key names of the original latent-diffusion (ldm / LVDM) code -> our diffusers-style names.

Three layouts, each a `rename` for `common.convert_state_dict` (keys without their checkpoint prefix):

UNet (`openaimodel3d.UNetModel`, LVDM's video variant of ldm's UNet): `input_blocks.N.M` is the M-th
module of the N-th sequential: input_blocks.0.0 = conv_in, then per level `layers_per_block` blocks of
[ResBlock, SpatialTransformer?, TemporalTransformer?] and a Downsample (`.0.op`); middle_block =
[ResBlock, SpatialTransformer, TemporalTransformer?, ResBlock]; output_blocks likewise with
`layers_per_block + 1` blocks per level, the last one ending with an Upsample (`.conv`); time_embed.0/2
= time_embedding.linear_1/2; out.0/2 = conv_norm_out/conv_out. Inside a ResBlock: in_layers.0/2 =
norm1/conv1, emb_layers.1 = time_emb_proj, out_layers.0/3 = norm2/conv2, skip_connection =
conv_shortcut, and the `temopral_conv` (sic) TemporalConvBlock's nn.Sequential indices conv.K.0 =
GroupNorm, conv.0.2 / conv.K.3 (K > 0) = Conv3d, conv_last.0/3 the same, become our
Pseudo3DConvBlock's conv_K/{norm, conv}. Transformer internals already carry diffusers' names
(attn1/attn2 to_q/to_k/to_v/to_out.0, ff.net.0.proj, ff.net.2, norm1-3, proj_in/out); the relative
position tables `relative_position_k.embeddings_table` become the params `relative_position_k`.

VAE (ldm `Encoder`/`Decoder`): down.I.block.J / up.I.block.J = down_blocks.I / up_blocks.(L-1-I)
(ldm numbers decoder levels as the encoder's, 0 = full resolution; diffusers in execution order),
downsample/upsample.conv = downsamplers/upsamplers.0.conv, mid.block_1/2 = mid_block.resnets.0/1,
mid.attn_1.{norm,q,k,v,proj_out} = mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0} (1x1
convs into Dense), nin_shortcut = conv_shortcut, norm_out = conv_norm_out.

OpenCLIP text (`FrozenOpenCLIPEmbedder.model`): token_embedding, positional_embedding, ln_final,
transformer.resblocks.I.{ln_1, ln_2, attn.out_proj, mlp.c_fc, mlp.c_proj} = HF CLIP's embeddings,
final_layer_norm and encoder.layers.I.{layer_norm1, layer_norm2, self_attn.out_proj, mlp.fc1, mlp.fc2};
the fused attn.in_proj_weight/bias are [q; k; v] stacked on axis 0 (`split_fused_qkv`).
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

import numpy as np

from vidjax.convert import common
from vidjax.models.unet import UNetConfig

_UNET_INNER = common.rename_by_rules([
    (r"^in_layers\.0\.", "norm1."), (r"^in_layers\.2\.", "conv1."), (r"^emb_layers\.1\.", "time_emb_proj."),
    (r"^out_layers\.0\.", "norm2."), (r"^out_layers\.3\.", "conv2."), (r"^skip_connection\.", "conv_shortcut."),
    (r"^temopral_conv\.conv\.(\d)\.0\.", r"temporal_conv.conv_\1.norm."),
    (r"^temopral_conv\.conv\.0\.2\.", "temporal_conv.conv_0.conv."),
    (r"^temopral_conv\.conv\.([1-9])\.3\.", r"temporal_conv.conv_\1.conv."),
    (r"^temopral_conv\.conv_last\.0\.", "temporal_conv.conv_last.norm."),
    (r"^temopral_conv\.conv_last\.3\.", "temporal_conv.conv_last.conv."),
    (r"\.relative_position_([kv])\.embeddings_table$", r".relative_position_\1"),
])


def unet_module_table(config: UNetConfig) -> dict[str, str]:
  """ldm module prefix ('input_blocks.4.1') -> our dotted module ('down_blocks.1.attentions.0')."""
  levels, per_level = len(config.block_out_channels), config.layers_per_block
  table = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
           "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}

  def block(ldm: str, ours: str, j: int, attention: bool) -> int:
    """Maps [res, attention?, temporal attention?] of one ldm sequential; returns its module count."""
    table[f"{ldm}.0"] = f"{ours}.resnets.{j}"
    if not attention:
      return 1
    table[f"{ldm}.1"] = f"{ours}.attentions.{j}"
    if config.temporal_attention:
      table[f"{ldm}.2"] = f"{ours}.temporal_attentions.{j}"
    return 3 if config.temporal_attention else 2

  n = 1
  for level in range(levels):
    for j in range(per_level):
      block(f"input_blocks.{n}", f"down_blocks.{level}", j, config.attention_levels[level])
      n += 1
    if level < levels - 1:
      table[f"input_blocks.{n}.0.op"] = f"down_blocks.{level}.downsamplers.0.conv"
      n += 1
  mid = block("middle_block", "mid_block", 0, True)  # the middle always attends
  table[f"middle_block.{mid}"] = "mid_block.resnets.1"
  n = 0
  for i, level in enumerate(reversed(range(levels))):
    for j in range(per_level + 1):
      count = block(f"output_blocks.{n}", f"up_blocks.{i}", j, config.attention_levels[level])
      if level > 0 and j == per_level:
        table[f"output_blocks.{n}.{count}.conv"] = f"up_blocks.{i}.upsamplers.0.conv"
      n += 1
  return table


def unet_renamer(config: UNetConfig) -> Callable[[str], str]:
  """An ldm UNet key (without 'model.diffusion_model.') -> our dotted key; unknown keys pass unchanged."""
  table = unet_module_table(config)

  def rename(key: str) -> str:
    parts = key.split(".")
    for n in (4, 3, 2):  # the longest module prefix wins ('input_blocks.3.0.op' before 'input_blocks.3.0')
      prefix = ".".join(parts[:n])
      if prefix in table:
        return table[prefix] + "." + _UNET_INNER(".".join(parts[n:]))
    return key

  return rename


_VAE_RULES = common.rename_by_rules([
    (r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets."),
    (r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
    (r"\.mid\.block_1\.", ".mid_block.resnets.0."), (r"\.mid\.block_2\.", ".mid_block.resnets.1."),
    (r"\.mid\.attn_1\.norm\.", ".mid_block.attentions.0.group_norm."),
    (r"\.mid\.attn_1\.([qkv])\.", r".mid_block.attentions.0.to_\1."),
    (r"\.mid\.attn_1\.proj_out\.", ".mid_block.attentions.0.to_out.0."),
    (r"\.nin_shortcut\.", ".conv_shortcut."), (r"\.norm_out\.", ".conv_norm_out."),
])
_DECODER_LEVEL = re.compile(r"^decoder\.up\.(\d+)\.(block|upsample)\.")


def vae_renamer(num_levels: int) -> Callable[[str], str]:
  """An ldm VAE key (without 'first_stage_model.') -> our dotted key, for `num_levels` resolutions."""

  def decoder_level(m: re.Match) -> str:
    kind = "resnets" if m.group(2) == "block" else "upsamplers.0"
    return f"decoder.up_blocks.{num_levels - 1 - int(m.group(1))}.{kind}."

  return lambda key: _VAE_RULES(_DECODER_LEVEL.sub(decoder_level, key))


_OPEN_CLIP_RULES = common.rename_by_rules([
    (r"^token_embedding\.", "embeddings.token_embedding."),
    (r"^positional_embedding$", "embeddings.position_embedding.weight"),
    (r"^ln_final\.", "final_layer_norm."), (r"^transformer\.resblocks\.", "encoder.layers."),
    (r"\.ln_([12])\.", r".layer_norm\1."), (r"\.attn\.out_proj\.", ".self_attn.to_out.0."),
    (r"\.attn\.to_([qkv])\.", r".self_attn.to_\1."), (r"\.mlp\.c_fc\.", ".mlp.fc1."), (r"\.mlp\.c_proj\.", ".mlp.fc2."),
])
_RESBLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.")


def split_fused_qkv(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """OpenCLIP's attn.in_proj_weight (3D, D) / in_proj_bias (3D,) -> attn.to_q/to_k/to_v weight and bias."""
  out = {}
  for key, value in state_dict.items():
    fused = re.match(r"^(.*\.attn)\.in_proj_(weight|bias)$", key)
    if fused is None:
      out[key] = value
      continue
    for name, part in zip("qkv", np.split(np.asarray(value), 3, axis=0)):
      out[f"{fused.group(1)}.to_{name}.{fused.group(2)}"] = part
  return out


def open_clip_rename(key: str) -> str:
  """An OpenCLIP text key (after `split_fused_qkv`) -> our text tower's dotted key."""
  return _OPEN_CLIP_RULES(key)


def open_clip_unused(num_layers: int) -> Callable[[str], bool]:
  """Which OpenCLIP text keys a `num_layers`-block text tower leaves unused.

  Only the first `num_layers` blocks are kept (SD-2 and Make-Your-Video read the penultimate layer of
  OpenCLIP ViT-H, so the last block is dropped, as in diffusers' 23-layer SD-2 text encoder); the
  projection and logit scale serve CLIP's contrastive head, which text-token conditioning never uses.
  """

  def unused(key: str) -> bool:
    block = _RESBLOCK.match(key)
    return key in ("text_projection", "logit_scale") or bool(block and int(block.group(1)) >= num_layers)

  return unused
