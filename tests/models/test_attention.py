"""The one attention function against independent references (jax.nn and plain einsums)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidjax.models.attention import dot_product_attention

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
