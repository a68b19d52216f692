"""Gen-1's prior: a diffusion model that maps a caption's CLIP text encoding to a CLIP image embedding.

Gen-1 conditions on CLIP image embeddings and edits from text through a prior (Gen-1 Sec. 3.2,
after DALL-E 2's, Ramesh et al. 2022 Sec. 2.1). As DALL-E 2's diffusion prior, `DiffusionPrior` is a
decoder-only transformer with a causal mask over the sequence, in order:

  [text tokens' hidden states (L) | CLIP text embedding | timestep | noised image embedding | query]

and the output at the final query, projected to D, is the predicted clean image embedding (an x0
prediction, the schedule's 'sample' parameterisation, regressed with MSE).

Embeddings live in the normalised space `embedding_space`: L2-normalised, as DALL-E 2 normalises
CLIP embeddings (only the direction carries meaning: CLIP scores are cosines), then scaled by
sqrt(D) so that each component has about unit variance, the scale of the diffusion noise; a unit
vector's components are ~1/sqrt(D) and would drown in it at every timestep but the first few.

Classifier-free guidance: `drop_text` (B,) replaces the text conditioning by a learned null text
embedding and hides the text tokens (training drops them at `text_drop_prob`, DALL-E 2's 10 %).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vidjax.diffusion import schedules
from vidjax.models import layers
from vidjax.models.attention import Attention, FeedForward

Dtype = Any
# The non-text positions of the sequence: text embedding, timestep, noised image embedding, query.
EXTRA_POSITIONS = 4


@dataclasses.dataclass(frozen=True)
class PriorConfig:
  """A prior's shape and its noise process.

  Attributes:
    embed_dim: D, the CLIP embedding width (text and image embeddings share it).
    text_width: the width of the text tower's hidden states.
    max_text_tokens: L, the text positions (the tokenizer's context length).
    width, depth, heads: the transformer (width % heads == 0).
    ff_mult: the GEGLU feed-forward's hidden width over `width`. A layer holds (4 + 3 ff_mult) width^2
      weights: with 2, width 2048 and depth 24 make DALL-E 2's 1B prior.
    num_train_timesteps, beta_schedule: the noise schedule; DALL-E 2 uses 1000 cosine steps.
    text_drop_prob: the training rate at which the text is replaced by the null conditioning.
  """

  embed_dim: int
  text_width: int
  max_text_tokens: int
  width: int = 256
  depth: int = 4
  heads: int = 4
  ff_mult: int = 4
  num_train_timesteps: int = 1000
  beta_schedule: str = "squaredcos_cap_v2"
  text_drop_prob: float = 0.1

  def __post_init__(self):
    if self.width % self.heads:
      raise ValueError(f"PriorConfig: width {self.width} is not a multiple of heads {self.heads}")
    if not 0.0 <= self.text_drop_prob <= 1.0:
      raise ValueError(f"PriorConfig: text_drop_prob {self.text_drop_prob} is not in [0, 1]")

  @property
  def sequence_length(self) -> int:
    return self.max_text_tokens + EXTRA_POSITIONS

  def schedule(self) -> schedules.Schedule:
    return schedules.make_schedule(self.beta_schedule, self.num_train_timesteps)


def embedding_space(embeds: jax.Array) -> jax.Array:
  """(B, D) raw CLIP embeddings -> (B, D) in the prior's space: unit direction times sqrt(D)."""
  embeds = embeds.astype(jnp.float32)
  return embeds * (math.sqrt(embeds.shape[-1]) / jnp.linalg.norm(embeds, axis=-1, keepdims=True))


def example_inputs(config: PriorConfig, batch: int = 1) -> dict[str, jax.Array]:
  """Zero inputs of `DiffusionPrior.__call__`'s shapes (for `init` and `jax.eval_shape`), by keyword."""
  d, length = config.embed_dim, config.max_text_tokens
  return dict(noisy_embeds=jnp.zeros((batch, d)), timesteps=jnp.zeros((batch,), jnp.int32),
              text_hidden=jnp.zeros((batch, length, config.text_width)), text_embeds=jnp.zeros((batch, d)),
              text_mask=jnp.ones((batch, length), bool), drop_text=jnp.zeros((batch,), bool))


def param_shapes(config: PriorConfig) -> dict[str, Any]:
  """The prior's param tree of `jax.ShapeDtypeStruct`s (unboxed), without allocating it."""
  shapes = jax.eval_shape(DiffusionPrior(config).init, jax.random.key(0), **example_inputs(config))
  return nn.unbox(shapes)["params"]


def text_token_mask(input_ids: jax.Array, end_positions: jax.Array) -> jax.Array:
  """(B, L) bool: the tokens up to and including each caption's end token (B,); the padding after it is hidden."""
  return jnp.arange(input_ids.shape[-1])[None, :] <= end_positions[:, None]


class CausalTransformer(nn.Module):
  """Pre-LN blocks x + attn(LN(x)), x + ff(LN(x)) with a causal mask: (B, S, W) -> (B, S, W), final LN.

  key_mask (B, S) bool hides keys (padding, dropped text) from every query, except each position
  from itself, so that every query keeps a key (the one attention function's requirement).
  """

  depth: int
  heads: int
  ff_mult: int = 4
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    length = x.shape[1]
    mask = jnp.tril(jnp.ones((length, length), bool))[None, None]  # (1, 1, Sq, Sk): key <= query
    if key_mask is not None:
      mask = mask & (key_mask[:, None, None, :] | jnp.eye(length, dtype=bool)[None, None])
    for i in range(self.depth):
      h = layers.layer_norm(name=f"norm1_{i}", **kw)(x)
      x = x + Attention(heads=self.heads, head_dim=x.shape[-1] // self.heads, qkv_bias=True, name=f"attn_{i}",
                        **kw)(h, mask=mask)
      x = x + FeedForward(mult=self.ff_mult, name=f"ff_{i}", **kw)(layers.layer_norm(name=f"norm2_{i}", **kw)(x))
    return layers.layer_norm(name="final_norm", **kw)(x)


class DiffusionPrior(nn.Module):
  """Predicts the clean image embedding (x0) from its noised version and the caption's CLIP encoding."""

  config: PriorConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, noisy_embeds: jax.Array, timesteps: jax.Array, text_hidden: jax.Array, text_embeds: jax.Array,
               text_mask: jax.Array, drop_text: jax.Array) -> jax.Array:
    """One denoising prediction.

    Args:
      noisy_embeds: (B, D) the image embedding at timesteps t, in `embedding_space`.
      timesteps: (B,) int.
      text_hidden: (B, L, text_width) the text tower's last hidden states (L <= max_text_tokens).
      text_embeds: (B, D) the CLIP text embedding, in `embedding_space`.
      text_mask: (B, L) bool, the real tokens (`text_token_mask`).
      drop_text: (B,) bool, True = unconditional (classifier-free guidance's null branch).
    Returns:
      (B, D) float32 predicted clean image embedding, in `embedding_space`.
    """
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    batch, length = text_hidden.shape[:2]
    if length > c.max_text_tokens:
      raise ValueError(f"DiffusionPrior: {length} text tokens exceed max_text_tokens {c.max_text_tokens}")
    drop = drop_text.astype(bool)
    null_embeds = self.param("null_text_embeds", layers.partitioned(nn.initializers.normal(1.0), ("embed",)),
                             (c.embed_dim,), self.param_dtype)
    text_embeds = jnp.where(drop[:, None], null_embeds[None, :], text_embeds)
    # The dropped text embedding is replaced by the null one; its tokens are hidden: the null branch sees none.
    token_mask = text_mask.astype(bool) & ~drop[:, None]

    tokens = layers.dense(c.width, names=("mlp", "embed"), name="text_proj", **kw)(text_hidden)
    time = layers.TimestepMLP(c.width, name="time_embed", **kw)(layers.timestep_embedding(timesteps, c.width))
    # Separate projections for the text and the image embedding: they share a space in CLIP but
    # play opposite roles here (a condition and the sample being denoised).
    text_vector = layers.dense(c.width, names=("mlp", "embed"), name="text_embed_proj", **kw)(text_embeds)
    image_vector = layers.dense(c.width, names=("mlp", "embed"), name="image_embed_proj", **kw)(noisy_embeds)
    query = self.param("query", layers.partitioned(nn.initializers.normal(0.02), ("embed",)), (c.width,),
                       self.param_dtype)
    extra = jnp.stack([text_vector, time, image_vector, jnp.broadcast_to(query, (batch, c.width))], axis=1)
    x = jnp.concatenate([tokens.astype(extra.dtype), extra], axis=1)  # (B, L + 4, W)
    positions = self.param("position_embedding", layers.partitioned(nn.initializers.normal(0.02), (None, "embed")),
                           (c.sequence_length, c.width), self.param_dtype)
    # Positions counted from the end: the four extra slots keep their embeddings whatever L is.
    x = x + positions[c.sequence_length - x.shape[1]:]
    key_mask = jnp.concatenate([token_mask, jnp.ones((batch, EXTRA_POSITIONS), bool)], axis=1)
    x = CausalTransformer(depth=c.depth, heads=c.heads, ff_mult=c.ff_mult, name="transformer", **kw)(x, key_mask)
    return layers.dense(c.embed_dim, names=("embed", "mlp"), name="out_proj", **kw)(x[:, -1]).astype(jnp.float32)


def prior_flops(config: PriorConfig, batch: int) -> dict[str, float]:
  """Matmul FLOPs (2 x multiply-accumulates) of one forward and one training step (3 x forward) on `batch` captions.

  Dense layers act on S = max_text_tokens + 4 positions (the out projection on one); attention's
  QK^T and PV cost 2 * 2 * S^2 * width per layer (the causal mask is not exploited).
  """
  s, w, d = config.sequence_length, config.width, config.embed_dim
  per_layer = 2 * s * (4 + 3 * config.ff_mult) * w * w + 4 * s * s * w  # q, k, v, out; GEGLU in (2 m w) and out
  inputs = 2 * (config.max_text_tokens * config.text_width * w + 2 * d * w + 2 * w * w) + 2 * w * d
  forward = batch * (config.depth * per_layer + inputs)
  return {"forward": float(forward), "train_step": 3.0 * forward}
