"""The one attention function and the transformer blocks built on it.

Every attention in vidjax (spatial, temporal, cross, VAE, CLIP, DPT) goes through
`dot_product_attention` (BTNH layout in and out). The backend is chosen by config: 'xla' (CPU/TPU
and the portable default; plain einsums in heads-first layout) or 'cudnn' (GPU flash attention through
`jax.nn.dot_product_attention`, for bf16/fp16 spatial attention; it must be asked for explicitly, and
asked for off GPU it raises a ConfigError naming the setting, rather than falling back silently).
Masks (the causal window L_M) and additive biases (relative positions) go through the same function.
Long causal windows run block-local (`CausalBand`): the callers reshape around that one function, so
memory grows linearly with the sequence length instead of quadratically.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from vidjax.errors import ConfigError
from vidjax.models import layers

Dtype = Any
BACKENDS = ("xla", "cudnn")


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, bias: jax.Array | None = None,
                          mask: jax.Array | None = None, relative_values: jax.Array | None = None,
                          backend: str = "xla") -> jax.Array:
  """softmax(q k^T / sqrt(H) + bias, masked) v.

  Args:
    q: (B, Lq, N, H) queries; k, v: (B, Lk, N, H) keys and values.
    bias: additive logits, broadcastable to (B, N, Lq, Lk).
    mask: bool, broadcastable to (B, N, Lq, Lk); True = may attend. Every query must see a key.
    relative_values: (Lq, Lk, H) Shaw et al. value embeddings: adds sum_k p_qk r_qk to the output.
      The probabilities are needed explicitly, so this takes the einsum path on either backend (used
      only for temporal attention, whose sequences are short).
    backend: 'xla' or 'cudnn'.
  Returns:
    (B, Lq, N, H) in q's dtype.
  """
  if backend not in BACKENDS:
    raise ValueError(f"attention backend {backend!r}: expected one of {BACKENDS}")
  if backend == "cudnn" and jax.default_backend() != "gpu":  # cuDNN's own message names neither setting nor fix
    raise ConfigError("attention_backend", f"is 'cudnn', which needs an NVIDIA GPU, but this process runs on "
                      f"{jax.default_backend()}", "set unet.attention_backend='xla' (the default) off GPU")
  if backend == "cudnn" and relative_values is None:
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation="cudnn")
  # Heads first, (B, N, L, H): both products are then batched matmuls in XLA's canonical form, so only
  # the small q, k, v and output are transposed, never the (Lq, Lk) probabilities. With BTNH einsums
  # (and jax.nn.dot_product_attention's 'xla' path) XLA:CPU transposes the probabilities with strided
  # copies: 3x slower forward, 2x slower backward at 1024 tokens.
  q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
  q = q * (1.0 / jnp.sqrt(jnp.float32(q.shape[-1]))).astype(q.dtype)
  return jnp.swapaxes(_softmax_attention(q, k, v, bias, mask, relative_values), 1, 2)


def _logits(q: jax.Array, k: jax.Array, bias: jax.Array | None, mask: jax.Array | None) -> jax.Array:
  """(B, N, Lq, Lk) float32 logits from heads-first, pre-scaled q and k, biased and masked."""
  logits = jnp.einsum("bnqh,bnkh->bnqk", q, k, preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  return logits


def _attention_forward(q, k, v, bias, mask, relative_values):
  """Heads-first attention: (B, N, Lq, H) output in v's dtype and the (B, N, Lq, 1) float32 logsumexp."""
  logits = _logits(q, k, bias, mask)
  peak = jnp.max(logits, axis=-1, keepdims=True)
  unnormalised = jnp.exp(logits - peak)
  total = jnp.sum(unnormalised, axis=-1, keepdims=True)
  probs = (unnormalised / total).astype(v.dtype)
  out = jnp.einsum("bnqk,bnkh->bnqh", probs, v)
  if relative_values is not None:
    out = out + jnp.einsum("bnqk,qkh->bnqh", probs, relative_values.astype(v.dtype))
  return out, peak + jnp.log(total)


@jax.custom_vjp
def _softmax_attention(q, k, v, bias, mask, relative_values):
  """softmax(q k^T + bias, masked) (v + relative_values) on heads-first (B, N, L, H), q already scaled.

  A custom VJP because XLA's autodiff of the softmax reduces sum_k P dP over the (Lq, Lk)
  probabilities, the largest item of the UNet's backward on CPU. The backward here uses
  FlashAttention's identity instead: sum_k P_qk dP_qk = dO_q . O_q, a (B, N, Lq) row sum over the
  head width, and recomputes P = exp(logits - logsumexp) rather than keeping it.
  """
  return _attention_forward(q, k, v, bias, mask, relative_values)[0]


def _softmax_attention_fwd(q, k, v, bias, mask, relative_values):
  out, logsumexp = _attention_forward(q, k, v, bias, mask, relative_values)
  return out, (q, k, v, bias, mask, relative_values, out, logsumexp)


def _sum_to_shape(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Sums x over the axes along which an array of `shape` was broadcast to x.shape (numpy rules)."""
  lead = x.ndim - len(shape)
  broadcast = tuple(lead + i for i, n in enumerate(shape) if n == 1 and x.shape[lead + i] != 1)
  return jnp.sum(jnp.sum(x, axis=broadcast, keepdims=True), axis=tuple(range(lead)))


def _softmax_attention_bwd(residuals, d_out):
  q, k, v, bias, mask, relative_values, out, logsumexp = residuals
  f32 = jnp.float32
  probs = jnp.exp(_logits(q, k, bias, mask) - logsumexp)  # masked entries: exp(min - lse) = 0
  d_probs = jnp.einsum("bnqh,bnkh->bnqk", d_out, v, preferred_element_type=f32)
  if relative_values is not None:
    d_probs = d_probs + jnp.einsum("bnqh,qkh->bnqk", d_out, relative_values.astype(v.dtype),
                                   preferred_element_type=f32)
  # sum_k P_qk dP_qk = dO_q . sum_k P_qk (v_k + r_qk) = dO_q . O_q
  row = jnp.sum(d_out.astype(f32) * out.astype(f32), axis=-1, keepdims=True)
  d_logits = probs * (d_probs - row)
  d_scores = d_logits.astype(q.dtype)
  probs = probs.astype(v.dtype)
  d_q = jnp.einsum("bnqk,bnkh->bnqh", d_scores, k, preferred_element_type=f32).astype(q.dtype)
  d_k = jnp.einsum("bnqk,bnqh->bnkh", d_scores, q, preferred_element_type=f32).astype(k.dtype)
  d_v = jnp.einsum("bnqk,bnqh->bnkh", probs, d_out, preferred_element_type=f32).astype(v.dtype)
  d_bias = None if bias is None else _sum_to_shape(d_logits, bias.shape).astype(bias.dtype)
  d_relative = None if relative_values is None else jnp.einsum(
      "bnqk,bnqh->qkh", probs, d_out, preferred_element_type=f32).astype(relative_values.dtype)
  return d_q, d_k, d_v, d_bias, None, d_relative


_softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


def relative_position_index(length_q: int, length_k: int, max_distance: int, key_start: int = 0) -> jax.Array:
  """(Lq, Lk) int32 index into a (2 * max_distance + 1)-row table of clipped distances k - q.

  Query q sits at position q, key k at position key_start + k (a band's keys start one block early).
  """
  distance = key_start + jnp.arange(length_k)[None, :] - jnp.arange(length_q)[:, None]
  return jnp.clip(distance, -max_distance, max_distance) + max_distance


@flax.struct.dataclass
class CausalBand:
  """Block-local causal self-attention: position i sees positions j with i - window < j <= i.

  The L positions are cut into blocks of `block` (zero-padded at the end up to a multiple); the
  queries of block j attend to the 2 * block keys of blocks j - 1 and j only, so the logits are
  (B * blocks, N, block, 2 * block): memory linear in L where a (L, L) mask is quadratic. This equals
  full masked attention for window <= block + 1, the farthest reach the first query of a block has;
  the mask clamps larger windows to block + 1 so that every query gets the same. Make-Your-Video's
  temporal attention takes block = the relative-position clip distance C, the farthest distance its
  embeddings tell apart; callers (the edit pipeline) validate L_M. Padded positions lie in the
  future of every real query, so the mask hides them and their outputs are dropped.
  """

  window: jax.Array | int  # () int L_M; traced, so a new window does not recompile
  block: int = flax.struct.field(pytree_node=False)

  def _blocks(self, x: jax.Array) -> jax.Array:
    """(B, L, ...) -> (B, blocks, block, ...), zero-padded at the end of L."""
    b, length = x.shape[:2]
    blocks = -(-length // self.block)
    x = jnp.pad(x, ((0, 0), (0, blocks * self.block - length)) + ((0, 0),) * (x.ndim - 2))
    return x.reshape((b, blocks, self.block) + x.shape[2:])

  def queries(self, x: jax.Array) -> jax.Array:
    """(B, L, ...) -> (B * blocks, block, ...): each block's queries."""
    blocks = self._blocks(x)
    return blocks.reshape((-1,) + blocks.shape[2:])

  def keys(self, x: jax.Array) -> jax.Array:
    """(B, L, ...) -> (B * blocks, 2 * block, ...): each block's keys, preceded by the previous block's."""
    blocks = self._blocks(x)
    previous = jnp.pad(blocks[:, :-1], ((0, 0), (1, 0)) + ((0, 0),) * (blocks.ndim - 2))
    both = jnp.concatenate([previous, blocks], axis=2)
    return both.reshape((-1,) + both.shape[2:])

  def mask(self, batch: int, length: int) -> jax.Array:
    """(B * blocks, 1, block, 2 * block) bool from absolute positions: causal, within the window, not before 0."""
    blocks = -(-length // self.block)
    start = self.block * jnp.arange(blocks)[:, None, None]
    query = start + jnp.arange(self.block)[None, :, None]
    key = start - self.block + jnp.arange(2 * self.block)[None, None, :]
    # Later queries of a block could reach up to 2 block - 1 back; clamping keeps one window for all.
    window = jnp.minimum(self.window, self.block + 1)
    mask = (key <= query) & (query - key < window) & (key >= 0)
    return jnp.broadcast_to(mask, (batch,) + mask.shape).reshape((batch * blocks, 1) + mask.shape[1:])

  def merge(self, x: jax.Array, length: int) -> jax.Array:
    """(B * blocks, block, ...) -> (B, L, ...): the inverse of `queries`, padding dropped."""
    blocks = -(-length // self.block)
    x = x.reshape((-1, blocks * self.block) + x.shape[2:])
    return x[:, :length]


class Attention(nn.Module):
  """Multi-head attention with diffusers' parameter names (to_q, to_k, to_v, to_out_0).

  `relative_position` > 0 adds Shaw et al. relative key and value embeddings clipped at that
  distance (Make-Your-Video's temporal attention); their tables are `relative_position_k/_v`.
  """

  heads: int
  head_dim: int
  out_features: int | None = None  # defaults to the query width
  qkv_bias: bool = False
  relative_position: int = 0
  backend: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None, *, mask: jax.Array | None = None,
               band: CausalBand | None = None) -> jax.Array:
    """x: (B, Lq, C); context: (B, Lk, D) or None for self-attention; returns (B, Lq, out_features).

    mask as in dot_product_attention; or `band`: block-local causal self-attention (its own mask).
    """
    if band is not None and (context is not None or mask is not None):
      raise ValueError("a CausalBand is self-attention with its own mask: pass no context and no mask")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    inner = self.heads * self.head_dim
    batch, length = x.shape[:2]
    context = x if context is None else context
    split = lambda t: t.reshape(t.shape[:2] + (self.heads, self.head_dim))
    q = split(layers.dense(inner, names=("embed", "heads"), use_bias=self.qkv_bias, name="to_q", **kw)(x))
    k = split(layers.dense(inner, names=("embed", "heads"), use_bias=self.qkv_bias, name="to_k", **kw)(context))
    v = split(layers.dense(inner, names=("embed", "heads"), use_bias=self.qkv_bias, name="to_v", **kw)(context))
    key_start = 0
    if band is not None:  # blocks fold into the batch: q (B*blocks, block, N, H), k and v (B*blocks, 2 block, N, H)
      q, k, v = band.queries(q), band.keys(k), band.keys(v)
      mask, key_start = band.mask(batch, length), -band.block
    bias = relative_values = None
    if self.relative_position:
      rows = 2 * self.relative_position + 1
      table_init = layers.partitioned(nn.initializers.xavier_uniform(), (None, None))
      table_k = self.param("relative_position_k", table_init, (rows, self.head_dim), self.param_dtype)
      table_v = self.param("relative_position_v", table_init, (rows, self.head_dim), self.param_dtype)
      # Distances depend only on (query offset, key slot), so a band's (block, 2 block, H) tables serve every block.
      index = relative_position_index(q.shape[1], k.shape[1], self.relative_position, key_start)
      scale = 1.0 / jnp.sqrt(jnp.float32(self.head_dim))
      # jnp.take, not table[index]: params loaded as numpy arrays and closed over in a jit would index by a tracer
      # through numpy's __getitem__ (TracerArrayConversionError).
      bias = jnp.einsum("bqnh,qkh->bnqk", q, jnp.take(table_k, index, axis=0).astype(q.dtype)) * scale.astype(q.dtype)
      relative_values = jnp.take(table_v, index, axis=0)
    out = dot_product_attention(q, k, v, bias=bias, mask=mask, relative_values=relative_values,
                                backend=self.backend)
    if band is not None:
      out = band.merge(out, length)
    out = out.reshape(out.shape[:2] + (inner,))
    return layers.dense(self.out_features or x.shape[-1], names=("heads", "embed"), name="to_out_0", **kw)(out)


class GEGLU(nn.Module):
  """proj to 2x width, split, x * gelu(gate) (exact gelu, as torch)."""

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = layers.dense(2 * self.features, names=("embed", "mlp"), dtype=self.dtype, param_dtype=self.param_dtype,
                     name="proj")(x)
    h, gate = jnp.split(h, 2, axis=-1)
    return h * nn.gelu(gate, approximate=False)


class GELU(nn.Module):
  """proj, then exact gelu (diffusers' GELU activation module, approximate='none')."""

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = layers.dense(self.features, names=("embed", "mlp"), dtype=self.dtype, param_dtype=self.param_dtype,
                     name="proj")(x)
    return nn.gelu(h, approximate=False)


class FeedForward(nn.Module):
  """diffusers' FeedForward and its names (net_0.proj, net_2): hidden width mult * D, GEGLU (its default)
  or 'gelu' activation, out to `out_features` (default the input's width)."""

  mult: int = 4
  activation_fn: str = "geglu"
  out_features: int | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    activation = {"geglu": GEGLU, "gelu": GELU}[self.activation_fn]
    h = activation(self.mult * x.shape[-1], name="net_0", **kw)(x)
    return layers.dense(self.out_features or x.shape[-1], names=("mlp", "embed"), name="net_2", **kw)(h)


class TransformerBlock(nn.Module):
  """LN -> self-attn -> LN -> attn2 -> LN -> GEGLU FF, each residual (diffusers BasicTransformerBlock).

  attn2 attends to `context` (cross-attention) when `cross_attention`, else it is a second
  self-attention that also takes the mask or band (Make-Your-Video's temporal blocks).
  """

  heads: int
  head_dim: int
  cross_attention: bool = True
  relative_position: int = 0
  backend: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None, *, mask: jax.Array | None = None,
               band: CausalBand | None = None) -> jax.Array:
    """x: (B, L, C); context: (B, Lc, D); mask or band for the self-attention(s); returns (B, L, C)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    attn = dict(heads=self.heads, head_dim=self.head_dim, relative_position=self.relative_position,
                backend=self.backend, **kw)
    x = x + Attention(name="attn1", **attn)(layers.layer_norm(name="norm1", **kw)(x), mask=mask, band=band)
    h = layers.layer_norm(name="norm2", **kw)(x)
    if self.cross_attention:
      x = x + Attention(name="attn2", **{**attn, "relative_position": 0})(h, context)
    else:
      x = x + Attention(name="attn2", **attn)(h, mask=mask, band=band)
    return x + FeedForward(name="ff", **kw)(layers.layer_norm(name="norm3", **kw)(x))


class SpatialTransformer(nn.Module):
  """Per-frame transformer on (N, H, W, C) (diffusers Transformer2DModel, linear projections).

  GroupNorm (eps 1e-6) -> proj_in -> blocks over the H*W tokens with cross-attention -> proj_out,
  plus the input. 1x1-conv projections (SD-1 checkpoints) convert to the same Dense layers.
  """

  heads: int
  head_dim: int
  depth: int = 1
  num_groups: int = 32
  backend: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    """x: (N, H, W, C); context: (N, L, D)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    n, h, w, c = x.shape
    inner = self.heads * self.head_dim
    y = layers.group_norm(self.num_groups, 1e-6, name="norm", **kw)(x).reshape(n, h * w, c)
    y = layers.dense(inner, names=("embed", "mlp"), name="proj_in", **kw)(y)
    for i in range(self.depth):
      y = TransformerBlock(heads=self.heads, head_dim=self.head_dim, backend=self.backend,
                           name=f"transformer_blocks_{i}", **kw)(y, context)
    y = layers.dense(c, names=("mlp", "embed"), name="proj_out", **kw)(y)
    return x + y.reshape(n, h, w, c)
