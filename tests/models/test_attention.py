"""The one attention function against independent references (jax.nn and plain einsums).

Its XLA path has a hand-written backward (FlashAttention's row-sum identity), so every gradient is checked
against jax.grad of the plain softmax formula.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidjax.models import attention
from vidjax.models.attention import Attention, CausalBand, dot_product_attention

# Prime sizes: batch 2, 7 queries, 5 keys, 3 heads of width 11.
Q_SHAPE, KV_SHAPE = (2, 7, 3, 11), (2, 5, 3, 11)


def _qkv(seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(keys[0], Q_SHAPE), jax.random.normal(keys[1], KV_SHAPE),
          jax.random.normal(keys[2], KV_SHAPE))


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_matches_jax_nn_reference(with_bias, with_mask):
  q, k, v = _qkv()
  bias = jax.random.normal(jax.random.key(5), (2, 3, 7, 5)) if with_bias else None
  mask = (jnp.arange(5)[None, :] <= jnp.arange(7)[:, None])[None, None] if with_mask else None
  ours = dot_product_attention(q, k, v, bias=bias, mask=mask)
  ref = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation="xla")
  np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-5, rtol=0)
  grad = lambda fn: jax.grad(lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v))), argnums=(0, 1, 2))(q, k, v)
  ours_grads = grad(lambda *a: dot_product_attention(*a, bias=bias, mask=mask))
  ref_grads = grad(lambda *a: jax.nn.dot_product_attention(*a, bias=bias, mask=mask, implementation="xla"))
  for g, r in zip(ours_grads, ref_grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-5, rtol=0)


def test_relative_values_add_probability_weighted_embeddings():
  q, k, v = _qkv(1)
  table = jax.random.normal(jax.random.key(6), (7, 5, 11))
  logits = jnp.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(11)
  probs = jax.nn.softmax(logits, axis=-1)
  ref = jnp.einsum("bnqk,bknh->bqnh", probs, v) + jnp.einsum("bnqk,qkh->bqnh", probs, table)
  ours = dot_product_attention(q, k, v, relative_values=table)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-5, rtol=0)


def _reference(q, k, v, bias=None, mask=None, relative_values=None):
  """The textbook formula in BTNH einsums, differentiated by XLA's autodiff."""
  logits = jnp.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(q.shape[-1])
  if bias is not None:
    logits = logits + bias
  if mask is not None:
    logits = jnp.where(mask, logits, -1e30)
  probs = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bnqk,bknh->bqnh", probs, v)
  if relative_values is not None:
    out = out + jnp.einsum("bnqk,qkh->bqnh", probs, relative_values)
  return out


def _assert_grads_close(ours, ref, rtol=1e-5):
  for g, r in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    scale = float(jnp.max(jnp.abs(r)))
    assert scale > 0  # a vanishing reference gradient would make the comparison empty
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("bias_shape", [None, (2, 3, 7, 5), (1, 3, 1, 5), (7, 5)])
@pytest.mark.parametrize("mask_kind", [None, "causal", "key_padding"])
@pytest.mark.parametrize("with_relative_values", [False, True])
def test_gradients_match_autodiff_of_plain_formula(bias_shape, mask_kind, with_relative_values):
  q, k, v = _qkv(2)
  keys = jax.random.split(jax.random.key(7), 2)
  bias = None if bias_shape is None else jax.random.normal(keys[0], bias_shape)
  table = jax.random.normal(keys[1], (7, 5, 11)) if with_relative_values else None
  masks = {None: None, "causal": (jnp.arange(5)[None, :] <= jnp.arange(7)[:, None])[None, None],
           "key_padding": (jnp.arange(5) < jnp.array([3, 5])[:, None])[:, None, None, :]}
  mask = masks[mask_kind]
  # A random cotangent, so no structure of sum() hides an error in one row or head.
  cotangent = jax.random.normal(jax.random.key(8), Q_SHAPE)
  loss = lambda fn: lambda q, k, v, bias, table: jnp.sum(cotangent * fn(q, k, v, bias=bias, mask=mask,
                                                                         relative_values=table))
  args = (q, k, v, bias, table)
  ours_out = dot_product_attention(q, k, v, bias=bias, mask=mask, relative_values=table)
  np.testing.assert_allclose(np.asarray(ours_out), np.asarray(_reference(q, k, v, bias, mask, table)),
                             atol=1e-5, rtol=0)
  ours = jax.grad(loss(dot_product_attention), argnums=tuple(range(5)))(*args)
  ref = jax.grad(loss(_reference), argnums=tuple(range(5)))(*args)
  for name, g, r in zip(("q", "k", "v", "bias", "relative_values"), ours, ref):
    assert (g is None) == (r is None), name
    if r is not None:
      assert g.shape == r.shape, name
      _assert_grads_close(g, r)


def test_gradients_compose_with_jit_and_vmap():
  """The custom backward composes with jit and vmap (the UNet folds frames into the batch)."""
  q, k, v = _qkv(3)
  f = lambda fn: lambda q, k, v: jnp.sum(jnp.sin(fn(q[None], k[None], v[None])))
  ours = jax.jit(jax.vmap(jax.grad(f(dot_product_attention), argnums=(0, 1, 2))))(q, k, v)
  ref = jax.vmap(jax.grad(f(_reference), argnums=(0, 1, 2)))(q, k, v)
  _assert_grads_close(ours, ref)


def test_bfloat16_gradients_keep_dtypes_and_follow_float32():
  q, k, v = _qkv(4)
  bias = jax.random.normal(jax.random.key(9), (2, 3, 7, 5))
  loss = lambda q, k, v, bias: jnp.sum(jnp.sin(dot_product_attention(q, k, v, bias=bias).astype(jnp.float32)))
  low = jax.grad(loss, argnums=(0, 1, 2, 3))(*(t.astype(jnp.bfloat16) for t in (q, k, v)), bias)
  high = jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, bias)
  for g, r, name in zip(low, high, "qkvb"):
    assert g.dtype == (jnp.float32 if name == "b" else jnp.bfloat16), name
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r), atol=0.05 * float(jnp.max(jnp.abs(r))))


def test_temporal_attention_parameter_gradients_match_plain_formula(monkeypatch):
  """Relative-position tables (bias through q, values directly) and a causal band: every parameter's gradient."""
  module = Attention(heads=3, head_dim=11, relative_position=2)
  x = jax.random.normal(jax.random.key(10), (2, 7, 13))
  band = CausalBand(window=3, block=2)
  params = module.init(jax.random.key(11), x, band=band)
  loss = lambda params, x: jnp.sum(jnp.sin(module.apply(params, x, band=band)))
  ours = jax.grad(loss, argnums=(0, 1))(params, x)
  monkeypatch.setattr(attention, "dot_product_attention", lambda *a, backend, **kw: _reference(*a, **kw))
  ref = jax.grad(loss, argnums=(0, 1))(params, x)
  assert jax.tree.structure(ours) == jax.tree.structure(ref)
  _assert_grads_close(ours, ref)
