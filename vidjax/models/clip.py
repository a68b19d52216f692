"""CLIP text and vision towers in linen, with Hugging Face's module names, plus preprocessing and tokenizer.

Gen-1 conditions on CLIP image embeddings (`encode_image(...)['image_embeds']`); Make-Your-Video and
SD-2-depth condition on OpenCLIP ViT-H text tokens through cross-attention.

What SD-2 and Make-Your-Video feed the UNet: their `FrozenOpenCLIPEmbedder(layer="penultimate")` runs
all but the last of the 24 OpenCLIP blocks and then applies the final layer norm `ln_final`. Our
`penultimate` output is exactly that, `final_layer_norm(hidden_states[-2])` (the norm included, as in
diffusers' `clip_skip=1`). diffusers' packaging of SD-2 (`stable-diffusion-2-depth/text_encoder`)
already dropped the last block (`num_hidden_layers: 23`), so for that folder the same tensor is
`last_hidden_state`; use `penultimate` only with the full 24-layer OpenCLIP model.

Parameter trees mirror HF's (`embeddings/token_embedding`, `encoder/layers_0/self_attn/...`,
`final_layer_norm`, `pre_layrnorm` with HF's spelling), except that attention projections use the
project's shared `Attention` names (to_q, to_k, to_v, to_out_0) and each tower holds its own
projection (`text_projection`, `visual_projection`), so one tower's params are self-contained.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vidjax.errors import ConfigError, InputError
from vidjax.models import layers
from vidjax.models.attention import Attention

Dtype = Any
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # OpenAI CLIP
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # OpenCLIP ViT-H (SD-2), exact erf gelu as torch
}
_LEGACY_EOS_TOKEN_ID = 2  # configs written before transformers PR #24773 carry this wrong end-token id


def _from_hf(cls, hf: Mapping[str, Any], source: str, projection_dim: int | None):
  """`cls` from the fields of an HF config dict (absent keys keep HF's defaults), validated."""
  names = {f.name for f in dataclasses.fields(cls)}
  config = cls(**{k: v for k, v in hf.items() if k in names and k != "projection_dim"},
               projection_dim=projection_dim)
  if config.hidden_act not in _ACTIVATIONS:
    raise ConfigError(source, f"hidden_act {config.hidden_act!r} is not supported",
                      f"use one of {sorted(_ACTIVATIONS)} (OpenAI CLIP or OpenCLIP)")
  if config.hidden_size % config.num_attention_heads:
    raise ConfigError(source, f"hidden_size {config.hidden_size} is not a multiple of num_attention_heads "
                      f"{config.num_attention_heads}", "fix config.json")
  return config


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  """The text tower; defaults are transformers' `CLIPTextConfig` defaults (absent keys in config.json).

  `projection_dim` is None for towers without `text_projection` (HF `CLIPTextModel`, SD-2's encoder).
  """

  vocab_size: int = 49408
  hidden_size: int = 512
  intermediate_size: int = 2048
  num_attention_heads: int = 8
  num_hidden_layers: int = 12
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  projection_dim: int | None = 512
  eos_token_id: int = 49407

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], *, projection_dim: int | None, source: str = "config") -> CLIPTextConfig:
    if not isinstance(hf.get("eos_token_id", 0), int):
      raise ConfigError(source, f"eos_token_id {hf['eos_token_id']!r} is not one integer",
                        "set the end-of-text token id (49407 for CLIP's BPE) in config.json")
    return _from_hf(cls, hf, source, projection_dim)


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
  """The vision tower (a ViT); defaults are transformers' `CLIPVisionConfig` defaults."""

  hidden_size: int = 768
  intermediate_size: int = 3072
  num_attention_heads: int = 12
  num_hidden_layers: int = 12
  num_channels: int = 3
  image_size: int = 224
  patch_size: int = 32
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  projection_dim: int | None = 512

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], *, projection_dim: int | None, source: str = "config") -> CLIPVisionConfig:
    if not isinstance(hf.get("image_size", 0), int) or not isinstance(hf.get("patch_size", 0), int):
      raise ConfigError(source, "image_size and patch_size must be integers (square images and patches)",
                        "fix config.json")
    return _from_hf(cls, hf, source, projection_dim)


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """The towers a checkpoint holds: `text`, `vision`, or both (HF `CLIPModel`)."""

  text: CLIPTextConfig | None = None
  vision: CLIPVisionConfig | None = None


def _embed(num: int, features: int, name: str, **kw) -> nn.Embed:
  init = layers.partitioned(nn.initializers.normal(0.02), (None, "embed"))
  return nn.Embed(num, features, embedding_init=init, name=name, **kw)


class _MLP(nn.Module):
  """fc1 -> activation -> fc2 (HF `CLIPMLP`)."""

  intermediate_size: int
  hidden_act: str
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.dense(self.intermediate_size, names=("embed", "mlp"), name="fc1", **kw)(x)
    return layers.dense(x.shape[-1], names=("mlp", "embed"), name="fc2", **kw)(_ACTIVATIONS[self.hidden_act](h))


class _EncoderLayer(nn.Module):
  """x + attn(LN(x)), then x + mlp(LN(x)) (HF `CLIPEncoderLayer`)."""

  config: CLIPTextConfig | CLIPVisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    head_dim = c.hidden_size // c.num_attention_heads
    h = layers.layer_norm(c.layer_norm_eps, name="layer_norm1", **kw)(x)
    x = x + Attention(c.num_attention_heads, head_dim, qkv_bias=True, name="self_attn", **kw)(h, mask=mask)
    h = layers.layer_norm(c.layer_norm_eps, name="layer_norm2", **kw)(x)
    return x + _MLP(c.intermediate_size, c.hidden_act, name="mlp", **kw)(h)


class _Encoder(nn.Module):
  """The layers; returns [input, output of layer 1, ..., output of layer N], un-normed (HF's hidden_states)."""

  config: CLIPTextConfig | CLIPVisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None) -> list[jax.Array]:
    """x: (B, L, D); mask: bool broadcastable to (B, heads, L, L), or None."""
    hidden = [x]
    for i in range(self.config.num_hidden_layers):
      hidden.append(_EncoderLayer(self.config, name=f"layers_{i}", dtype=self.dtype,
                                  param_dtype=self.param_dtype)(hidden[-1], mask))
    return hidden


class _TextEmbeddings(nn.Module):
  config: CLIPTextConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array) -> jax.Array:
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    tokens = _embed(c.vocab_size, c.hidden_size, "token_embedding", **kw)(input_ids)
    return tokens + _embed(c.max_position_embeddings, c.hidden_size, "position_embedding", **kw)(
        jnp.arange(input_ids.shape[-1]))


def end_token_positions(input_ids: jax.Array, eos_token_id: int) -> jax.Array:
  """(B, L) ids -> (B,) index of the token HF pools at.

  HF's rule: the first `eos_token_id` (pads may equal it; 0 if absent), except for legacy configs with
  eos_token_id == 2, where the end token is taken to be the largest id (true of CLIP's BPE).
  """
  if eos_token_id == _LEGACY_EOS_TOKEN_ID:
    return jnp.argmax(input_ids, axis=-1)
  return jnp.argmax(input_ids == eos_token_id, axis=-1)


class CLIPTextTransformer(nn.Module):
  """Token ids -> dict(last_hidden_state, penultimate, pooled, hidden_states[, text_embeds]).

  last_hidden_state, penultimate: (B, L, D), both through final_layer_norm; pooled: (B, D) at the end
  token; hidden_states: N + 1 un-normed (B, L, D) (embeddings, then each layer, as HF's);
  text_embeds: (B, projection_dim), when the config has a projection.
  """

  config: CLIPTextConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array) -> dict[str, Any]:
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    batch, length = input_ids.shape
    if length > c.max_position_embeddings:
      raise InputError("input_ids", f"{length} tokens exceed the {c.max_position_embeddings} positions of the model",
                       "tokenize with ClipTokenizer, which truncates to the context length")
    x = _TextEmbeddings(c, name="embeddings", **kw)(input_ids)
    causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
    hidden = _Encoder(c, name="encoder", **kw)(x, causal)
    final_norm = layers.layer_norm(c.layer_norm_eps, name="final_layer_norm", **kw)
    last = final_norm(hidden[-1])
    out = dict(last_hidden_state=last, penultimate=final_norm(hidden[-2]), hidden_states=tuple(hidden),
               pooled=last[jnp.arange(batch), end_token_positions(input_ids, c.eos_token_id)])
    if c.projection_dim:
      out["text_embeds"] = layers.dense(c.projection_dim, use_bias=False, names=("embed", "mlp"),
                                        name="text_projection", **kw)(out["pooled"])
    return out


class _VisionEmbeddings(nn.Module):
  config: CLIPVisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    """(B, S, S, C) -> (B, 1 + (S // patch)^2, D): class token then patches in row-major order."""
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    p = c.patch_size
    patches = layers.conv(c.hidden_size, (p, p), strides=p, padding="VALID", use_bias=False, name="patch_embedding",
                          **kw)(pixels)
    batch, grid_h, grid_w, width = patches.shape
    patches = patches.reshape(batch, grid_h * grid_w, width)
    init = layers.partitioned(nn.initializers.normal(width ** -0.5), ("embed",))
    class_token = self.param("class_embedding", init, (width,), self.param_dtype).astype(patches.dtype)
    x = jnp.concatenate([jnp.broadcast_to(class_token, (batch, 1, width)), patches], axis=1)
    return x + _embed(x.shape[1], width, "position_embedding", **kw)(jnp.arange(x.shape[1]))


class CLIPVisionTransformer(nn.Module):
  """(B, S, S, C) CLIP-normalised pixels -> dict(last_hidden_state, pooled, hidden_states[, image_embeds]).

  last_hidden_state: (B, 1 + P, D), not normed (HF's); pooled: (B, D) = post_layernorm(class token);
  image_embeds: (B, projection_dim), when the config has a projection.
  """

  config: CLIPVisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixels: jax.Array) -> dict[str, Any]:
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    expected = (c.image_size, c.image_size, c.num_channels)
    if pixels.ndim != 4 or pixels.shape[1:] != expected:
      raise InputError("pixels", f"shape {pixels.shape}, expected (B, {', '.join(map(str, expected))})",
                       "resize and crop with preprocess_images(frames, config.image_size)")
    x = _VisionEmbeddings(c, name="embeddings", **kw)(pixels)
    x = layers.layer_norm(c.layer_norm_eps, name="pre_layrnorm", **kw)(x)
    hidden = _Encoder(c, name="encoder", **kw)(x, None)
    pooled = layers.layer_norm(c.layer_norm_eps, name="post_layernorm", **kw)(hidden[-1][:, 0])
    out = dict(last_hidden_state=hidden[-1], pooled=pooled, hidden_states=tuple(hidden))
    if c.projection_dim:
      out["image_embeds"] = layers.dense(c.projection_dim, use_bias=False, names=("embed", "mlp"),
                                         name="visual_projection", **kw)(pooled)
    return out


@functools.partial(jax.jit, static_argnums=0)
def encode_text(config: CLIPTextConfig, params: Mapping[str, Any], input_ids: jax.Array) -> dict[str, Any]:
  """(B, L) int token ids -> `CLIPTextTransformer`'s dict (see its docstring and the module's on SD-2)."""
  return CLIPTextTransformer(config).apply({"params": params}, input_ids)


@functools.partial(jax.jit, static_argnums=0)
def encode_image(config: CLIPVisionConfig, params: Mapping[str, Any], pixels: jax.Array) -> dict[str, Any]:
  """(B, S, S, 3) pixels from `preprocess_images` -> `CLIPVisionTransformer`'s dict (image_embeds, pooled, ...)."""
  return CLIPVisionTransformer(config).apply({"params": params}, pixels)


def preprocess_images(frames: np.ndarray | jax.Array, image_size: int = 224) -> jax.Array:
  """uint8 (N, H, W, 3) frames -> float32 (N, S, S, 3), as HF's `CLIPImageProcessor` (PIL backend).

  The checked entry to `preprocess_levels` (see there), which training calls on its float frames.
  """
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise InputError("frames", f"{frames.dtype} array of shape {frames.shape}", "pass uint8 RGB frames (N, H, W, 3)")
  return _preprocess(jnp.asarray(frames), image_size)


def random_frame_pixels(frames: jax.Array, rng: jax.Array, image_size: int) -> jax.Array:
  """(N, T, H, W, 3) clips in [-1, 1] -> (N, S, S, 3) CLIP pixels of one random frame of each clip.

  The frame a Gen-1 model's content comes from in training (`VideoDiffusionModel.embed_frames`) and
  the one the toy CLIP and prior stages embed: back to the grey levels the loader's frames came from,
  then `preprocess_levels`, as the edit pipeline's content image.
  """
  n, t = frames.shape[:2]
  picked = frames[jnp.arange(n), jax.random.randint(rng, (n,), 0, t)]
  return preprocess_levels(jnp.clip(jnp.round((picked + 1.0) * 127.5), 0.0, 255.0), image_size)


def preprocess_levels(levels: jax.Array, image_size: int) -> jax.Array:
  """float (N, H, W, 3) grey levels in [0, 255] -> float32 (N, S, S, 3) CLIP pixels; traceable under jit.

  The one CLIP preprocessing, for inference (`preprocess_images`) and training (`embed_frames`) alike,
  OpenAI's and OpenCLIP's convention: the short side is resized to S (the long side to
  int(S * long / short)) with antialiased bicubic, the centre S x S is cropped (offset (size - S) // 2),
  and pixels are scaled to [0, 1] and normalised with CLIP's mean and std. A non-square frame is
  cropped, never squashed: a model trained on squashed frames would see other shapes at inference.
  """
  _, h, w, _ = levels.shape
  size = image_size
  new_h, new_w = (int(size * h / w), size) if w <= h else (size, int(size * w / h))
  x = _resize_like_pil(_resize_like_pil(levels.astype(jnp.float32), 2, new_w), 1, new_h)
  top, left = (new_h - size) // 2, (new_w - size) // 2
  x = x[:, top:top + size, left:left + size] / 255.0
  return (x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)


def _resize_like_pil(x: jax.Array, axis: int, size: int) -> jax.Array:
  """PIL's bicubic (Keys a = -0.5, kernel widened when shrinking) along one axis, rounded to uint8 levels.

  PIL resizes width then height and stores each pass as uint8, so we round and clip after each pass
  too; what remains is PIL's 22-bit fixed-point arithmetic (a fraction of a grey level).
  """
  shape = x.shape[:axis] + (size,) + x.shape[axis + 1:]
  x = jax.image.resize(x, shape, method="bicubic", antialias=True)
  return jnp.clip(jnp.floor(x + 0.5), 0.0, 255.0)


_preprocess = jax.jit(preprocess_levels, static_argnums=1)


class ClipTokenizer:
  """CLIP's BPE (transformers' fast tokenizer) padded or truncated to the model's context length."""

  def __init__(self, tokenizer, context_length: int):
    self.tokenizer, self.context_length = tokenizer, context_length

  @classmethod
  def from_folder(cls, path: str | os.PathLike, context_length: int | None = None) -> ClipTokenizer:
    """Loads vocab.json + merges.txt (or tokenizer.json) and the tokenizer config from a local folder.

    `context_length` defaults to the folder's `model_max_length` (77 for CLIP and OpenCLIP).
    """
    from transformers import CLIPTokenizerFast

    path = os.fspath(path)
    has = lambda name: os.path.isfile(os.path.join(path, name))
    fix = "point at a tokenizer/ folder saved with save_pretrained (vocab.json + merges.txt, or tokenizer.json)"
    if not os.path.isdir(path):
      raise InputError(path, "tokenizer folder not found", fix)
    # Without vocabulary files transformers silently builds a 3-token vocabulary: refuse instead.
    if not (has("tokenizer.json") or (has("vocab.json") and has("merges.txt"))):
      raise InputError(path, "no BPE vocabulary in the tokenizer folder", fix)
    try:
      tokenizer = CLIPTokenizerFast.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
      raise InputError(path, f"not a readable CLIP tokenizer ({e})", fix) from e
    context_length = context_length or tokenizer.model_max_length
    if context_length > 100_000:  # transformers' "unset" sentinel is about 1e30
      raise ConfigError(path, "the tokenizer config sets no model_max_length",
                        "pass context_length (77 for CLIP) or set model_max_length in tokenizer_config.json")
    return cls(tokenizer, int(context_length))

  def __call__(self, prompts: str | Sequence[str]) -> np.ndarray:
    """Prompts -> int32 (B, context_length) ids: bos, tokens, eos, then pads.

    A prompt longer than the context keeps its first context_length - 2 tokens and warns naming the
    words dropped; the empty prompt gives the unconditional ids (bos, eos, pads).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    for prompt, ids in zip(prompts, self.tokenizer(prompts, verbose=False)["input_ids"]):
      if len(ids) > self.context_length:
        dropped = self.tokenizer.decode(ids[self.context_length - 1:-1])
        warnings.warn(f"prompt {prompt!r} is longer than the {self.context_length}-token context; "
                      f"dropped: {dropped!r}", stacklevel=2)
    ids = self.tokenizer(prompts, padding="max_length", max_length=self.context_length, truncation=True,
                         return_tensors="np")["input_ids"]
    return ids.astype(np.int32)
