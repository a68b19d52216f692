"""Facts about the public Make-Your-Video checkpoint's layout, as key -> shape at reduced width.

Written from the layout rules of LVDM's `openaimodel3d.UNetModel` (configs/inference_256_v1.0.yaml),
ldm's AutoencoderKL and the OpenCLIP text tower (facts, not their code), at model_channels 32, head
width 8, context 16, temporal_length 16; `test_make_your_video.py` checks them against the public
code where it is available.
"""

from __future__ import annotations

import numpy as np

MC, HEAD, CONTEXT, TLEN, MULT, BLOCKS, ATTENTION_RES = 32, 8, 16, 16, (1, 2, 4, 4), 2, (4, 2, 1)
VAE_CH, VAE_MULT, Z = 32, (1, 2), 4
CLIP_WIDTH, CLIP_LAYERS, CLIP_MLP, VOCAB, POSITIONS = 128, 3, 160, 50, 7


def _res_block(p: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
  """ldm ResBlock (+ the spatially aware TemporalConvBlock `temopral_conv`)."""
  s = {f"{p}.in_layers.0.weight": (cin,), f"{p}.in_layers.0.bias": (cin,), f"{p}.in_layers.2.weight": (cout, cin, 3, 3),
       f"{p}.in_layers.2.bias": (cout,), f"{p}.emb_layers.1.weight": (cout, 4 * MC), f"{p}.emb_layers.1.bias": (cout,),
       f"{p}.out_layers.0.weight": (cout,), f"{p}.out_layers.0.bias": (cout,),
       f"{p}.out_layers.3.weight": (cout, cout, 3, 3), f"{p}.out_layers.3.bias": (cout,)}
  if cin != cout:
    s |= {f"{p}.skip_connection.weight": (cout, cin, 1, 1), f"{p}.skip_connection.bias": (cout,)}
  # conv.0 = (GroupNorm, SiLU, Conv3d); conv.1-3 and conv_last = (GroupNorm, SiLU, Dropout, Conv3d)
  for k, (name, kernel) in enumerate([("conv.0", (3, 1, 1)), ("conv.1", (1, 3, 3)), ("conv.2", (3, 1, 1)),
                                      ("conv.3", (3, 1, 1)), ("conv_last", (3, 1, 1))]):
    q = f"{p}.temopral_conv.{name}"
    conv = 2 if k == 0 else 3
    s |= {f"{q}.0.weight": (cout,), f"{q}.0.bias": (cout,), f"{q}.{conv}.weight": (cout, cout, *kernel),
          f"{q}.{conv}.bias": (cout,)}
  return s


def _transformer(p: str, c: int, temporal: bool) -> dict[str, tuple[int, ...]]:
  """SpatialTransformer / TemporalTransformer with use_linear, depth 1 (temporal: self-attention only)."""
  s = {f"{p}.norm.weight": (c,), f"{p}.norm.bias": (c,), f"{p}.proj_in.weight": (c, c), f"{p}.proj_in.bias": (c,),
       f"{p}.proj_out.weight": (c, c), f"{p}.proj_out.bias": (c,)}
  b = f"{p}.transformer_blocks.0"
  for attn in ("attn1", "attn2"):
    width = CONTEXT if attn == "attn2" and not temporal else c
    s |= {f"{b}.{attn}.to_q.weight": (c, c), f"{b}.{attn}.to_k.weight": (c, width),
          f"{b}.{attn}.to_v.weight": (c, width),
          f"{b}.{attn}.to_out.0.weight": (c, c), f"{b}.{attn}.to_out.0.bias": (c,)}
    if temporal:
      s |= {f"{b}.{attn}.relative_position_{kv}.embeddings_table": (2 * TLEN + 1, HEAD) for kv in "kv"}
  s |= {f"{b}.ff.net.0.proj.weight": (8 * c, c), f"{b}.ff.net.0.proj.bias": (8 * c,),
        f"{b}.ff.net.2.weight": (c, 4 * c), f"{b}.ff.net.2.bias": (c,)}
  return s | {f"{b}.norm{i}.{w}": (c,) for i in (1, 2, 3) for w in ("weight", "bias")}


def lvdm_unet_shapes() -> dict[str, tuple[int, ...]]:
  """Keys and shapes of LVDM's UNetModel (configs/inference_256_v1.0.yaml at reduced width)."""
  emb = 4 * MC
  s = {"time_embed.0.weight": (emb, MC), "time_embed.0.bias": (emb,), "time_embed.2.weight": (emb, emb),
       "time_embed.2.bias": (emb,), "input_blocks.0.0.weight": (MC, 5, 3, 3), "input_blocks.0.0.bias": (MC,)}
  skips, ch, n, ds = [MC], MC, 1, 1
  for level, mult in enumerate(MULT):
    for _ in range(BLOCKS):
      s |= _res_block(f"input_blocks.{n}.0", ch, mult * MC)
      ch = mult * MC
      if ds in ATTENTION_RES:
        s |= _transformer(f"input_blocks.{n}.1", ch, False) | _transformer(f"input_blocks.{n}.2", ch, True)
      skips.append(ch)
      n += 1
    if level < len(MULT) - 1:
      s |= {f"input_blocks.{n}.0.op.weight": (ch, ch, 3, 3), f"input_blocks.{n}.0.op.bias": (ch,)}
      skips.append(ch)
      n, ds = n + 1, ds * 2
  s |= _res_block("middle_block.0", ch, ch) | _transformer("middle_block.1", ch, False)
  s |= _transformer("middle_block.2", ch, True) | _res_block("middle_block.3", ch, ch)
  n = 0
  for level, mult in reversed(list(enumerate(MULT))):
    for i in range(BLOCKS + 1):
      s |= _res_block(f"output_blocks.{n}.0", ch + skips.pop(), mult * MC)
      ch, k = mult * MC, 1
      if ds in ATTENTION_RES:
        s |= _transformer(f"output_blocks.{n}.1", ch, False) | _transformer(f"output_blocks.{n}.2", ch, True)
        k = 3
      if level and i == BLOCKS:
        s |= {f"output_blocks.{n}.{k}.conv.weight": (ch, ch, 3, 3), f"output_blocks.{n}.{k}.conv.bias": (ch,)}
        ds //= 2
      n += 1
  return s | {"out.0.weight": (MC,), "out.0.bias": (MC,), "out.2.weight": (4, MC, 3, 3), "out.2.bias": (4,)}


def _vae_res(p: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
  s = {f"{p}.norm1.weight": (cin,), f"{p}.norm1.bias": (cin,), f"{p}.conv1.weight": (cout, cin, 3, 3),
       f"{p}.conv1.bias": (cout,), f"{p}.norm2.weight": (cout,), f"{p}.norm2.bias": (cout,),
       f"{p}.conv2.weight": (cout, cout, 3, 3), f"{p}.conv2.bias": (cout,)}
  return s | ({f"{p}.nin_shortcut.weight": (cout, cin, 1, 1), f"{p}.nin_shortcut.bias": (cout,)} if cin != cout else {})


def _vae_mid(p: str, c: int) -> dict[str, tuple[int, ...]]:
  attn = {f"{p}.attn_1.{n}.{w}": (c, c, 1, 1) if w == "weight" else (c,) for n in "qkv" for w in ("weight", "bias")}
  attn |= {f"{p}.attn_1.proj_out.weight": (c, c, 1, 1), f"{p}.attn_1.proj_out.bias": (c,),
           f"{p}.attn_1.norm.weight": (c,), f"{p}.attn_1.norm.bias": (c,)}
  return _vae_res(f"{p}.block_1", c, c) | attn | _vae_res(f"{p}.block_2", c, c)


def ldm_vae_shapes() -> dict[str, tuple[int, ...]]:
  """ldm AutoencoderKL (ch 32, ch_mult 1,2, one res block, no level attention, z 4)."""
  s = {"encoder.conv_in.weight": (VAE_CH, 3, 3, 3), "encoder.conv_in.bias": (VAE_CH,)}
  cin = VAE_CH
  for i, mult in enumerate(VAE_MULT):
    s |= _vae_res(f"encoder.down.{i}.block.0", cin, VAE_CH * mult)
    cin = VAE_CH * mult
    if i < len(VAE_MULT) - 1:
      s |= {f"encoder.down.{i}.downsample.conv.weight": (cin, cin, 3, 3),
            f"encoder.down.{i}.downsample.conv.bias": (cin,)}
  s |= _vae_mid("encoder.mid", cin) | {"encoder.norm_out.weight": (cin,), "encoder.norm_out.bias": (cin,),
                                       "encoder.conv_out.weight": (2 * Z, cin, 3, 3), "encoder.conv_out.bias": (2 * Z,),
                                       "quant_conv.weight": (2 * Z, 2 * Z, 1, 1), "quant_conv.bias": (2 * Z,),
                                       "post_quant_conv.weight": (Z, Z, 1, 1), "post_quant_conv.bias": (Z,),
                                       "decoder.conv_in.weight": (cin, Z, 3, 3), "decoder.conv_in.bias": (cin,)}
  s |= _vae_mid("decoder.mid", cin)
  for i in reversed(range(len(VAE_MULT))):
    for j in range(2):
      s |= _vae_res(f"decoder.up.{i}.block.{j}", cin, VAE_CH * VAE_MULT[i])
      cin = VAE_CH * VAE_MULT[i]
    if i:
      s |= {f"decoder.up.{i}.upsample.conv.weight": (cin, cin, 3, 3), f"decoder.up.{i}.upsample.conv.bias": (cin,)}
  return s | {"decoder.norm_out.weight": (cin,), "decoder.norm_out.bias": (cin,),
              "decoder.conv_out.weight": (3, cin, 3, 3), "decoder.conv_out.bias": (3,)}


def open_clip_shapes() -> dict[str, tuple[int, ...]]:
  """OpenCLIP text tower (visual deleted, as FrozenOpenCLIPEmbedder does)."""
  w = CLIP_WIDTH
  s = {"token_embedding.weight": (VOCAB, w), "positional_embedding": (POSITIONS, w), "ln_final.weight": (w,),
       "ln_final.bias": (w,), "text_projection": (w, 24), "logit_scale": ()}
  for i in range(CLIP_LAYERS):
    p = f"transformer.resblocks.{i}"
    s |= {f"{p}.ln_1.weight": (w,), f"{p}.ln_1.bias": (w,), f"{p}.attn.in_proj_weight": (3 * w, w),
          f"{p}.attn.in_proj_bias": (3 * w,), f"{p}.attn.out_proj.weight": (w, w), f"{p}.attn.out_proj.bias": (w,),
          f"{p}.ln_2.weight": (w,), f"{p}.ln_2.bias": (w,), f"{p}.mlp.c_fc.weight": (CLIP_MLP, w),
          f"{p}.mlp.c_fc.bias": (CLIP_MLP,), f"{p}.mlp.c_proj.weight": (w, CLIP_MLP), f"{p}.mlp.c_proj.bias": (w,)}
  return s


def _random(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {k: np.asarray(0.1 * rng.standard_normal(s), np.float32) for k, s in shapes.items()}


def fixture_state_dict() -> dict[str, np.ndarray]:
  """A random Lightning `state_dict` of LatentDepthDiffusion: UNet, VAE, OpenCLIP, DDPM buffers, a MiDaS key."""
  betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2  # LVDM's 'linear'
  sd = {f"model.diffusion_model.{k}": v for k, v in _random(lvdm_unet_shapes(), 0).items()}
  sd |= {f"first_stage_model.{k}": v for k, v in _random(ldm_vae_shapes(), 1).items()}
  sd |= {f"cond_stage_model.model.{k}": v for k, v in _random(open_clip_shapes(), 2).items()}
  sd |= {"betas": betas.astype(np.float32), "alphas_cumprod": np.cumprod(1 - betas).astype(np.float32),
         "depth_stage_model.model.pretrained.model.cls_token": np.zeros((1, 1, 8), np.float32)}
  return sd
