"""The DALL-E 2 prior's structure: a causal sequence, hidden padding, a null branch that ignores the text."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidjax.models.prior import (CausalTransformer, DiffusionPrior, PriorConfig, embedding_space, example_inputs,
                                 prior_flops)

CONFIG = PriorConfig(embed_dim=7, text_width=11, max_text_tokens=5, width=12, depth=2, heads=3, ff_mult=2)
B = 3


def _inputs(seed: int = 0):
  keys = jax.random.split(jax.random.key(seed), 4)
  return dict(noisy_embeds=jax.random.normal(keys[0], (B, CONFIG.embed_dim)),
              timesteps=jnp.array([0, 411, 997]),
              text_hidden=jax.random.normal(keys[1], (B, CONFIG.max_text_tokens, CONFIG.text_width)),
              text_embeds=embedding_space(jax.random.normal(keys[2], (B, CONFIG.embed_dim))),
              text_mask=jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool),
              drop_text=jnp.zeros((B,), bool))


@pytest.fixture(scope="module")
def prior():
  model = DiffusionPrior(CONFIG)
  params = model.init(jax.random.key(1), **_inputs())["params"]
  # Perturb the zero-initialised biases too, so that no input path is silently switched off.
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = treedef.unflatten([p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  apply = jax.jit(lambda inputs: model.apply({"params": params}, **inputs))
  return apply


def _changed(a, b) -> np.ndarray:
  """(B,) whether each row differs."""
  return np.any(np.abs(np.asarray(a) - np.asarray(b)) > 1e-6, axis=-1)


def test_the_causal_transformer_lets_no_position_see_a_later_one():
  model = CausalTransformer(depth=2, heads=3)
  x = jax.random.normal(jax.random.key(0), (2, 9, 12))
  params = model.init(jax.random.key(1), x)
  base = model.apply(params, x)
  bump = jax.random.normal(jax.random.key(2), (2, 12))  # not a constant: the layer norms would remove it
  for k in (0, 4, 8):
    out = model.apply(params, x.at[:, k].add(bump))
    np.testing.assert_array_equal(out[:, :k], base[:, :k])  # earlier positions: bit-identical
    assert np.all(np.abs(np.asarray(out[:, k:] - base[:, k:])).max(axis=-1) > 1e-4)  # k and after: all changed


def test_a_masked_key_is_hidden_from_every_other_position():
  model = CausalTransformer(depth=2, heads=3)
  x = jax.random.normal(jax.random.key(0), (1, 6, 12))
  key_mask = jnp.array([[True, False, True, True, True, True]])
  params = model.init(jax.random.key(1), x, key_mask)
  base = model.apply(params, x, key_mask)
  out = model.apply(params, x.at[:, 1].set(jax.random.normal(jax.random.key(2), (1, 12))), key_mask)
  np.testing.assert_allclose(np.delete(np.asarray(out), 1, axis=1), np.delete(np.asarray(base), 1, axis=1), atol=1e-6)


def test_the_prediction_reads_every_input(prior):
  inputs = _inputs()
  base = prior(inputs)
  assert base.shape == (B, CONFIG.embed_dim) and base.dtype == jnp.float32
  for name, change in (("noisy_embeds", lambda v: v + 0.5), ("timesteps", lambda v: v + 1),
                       ("text_embeds", lambda v: -v), ("text_hidden", lambda v: v.at[:, 0].multiply(-1.0))):
    assert _changed(prior({**inputs, name: change(inputs[name])}), base).all(), name


def test_padding_tokens_do_not_change_the_prediction(prior):
  inputs = _inputs()
  base = prior(inputs)
  # Only scene 0's positions 3 and 4 and scene 2's 1..4 are padding; scene 1 has none.
  other = _inputs(seed=7)["text_hidden"]
  noisy_padding = jnp.where(inputs["text_mask"][..., None], inputs["text_hidden"], other)
  out = prior({**inputs, "text_hidden": noisy_padding})
  np.testing.assert_allclose(out, base, atol=1e-5)
  real_tokens = jnp.where(inputs["text_mask"][..., None], other, inputs["text_hidden"])
  assert _changed(prior({**inputs, "text_hidden": real_tokens}), base).all()


def test_dropped_text_is_ignored_and_only_for_the_dropped_rows(prior):
  inputs = {**_inputs(), "drop_text": jnp.array([True, False, True])}
  base = prior(inputs)
  other = _inputs(seed=5)
  out = prior({**inputs, "text_hidden": other["text_hidden"], "text_embeds": other["text_embeds"],
               "text_mask": jnp.ones_like(inputs["text_mask"])})
  np.testing.assert_allclose(out[0], base[0], atol=1e-5)
  np.testing.assert_allclose(out[2], base[2], atol=1e-5)
  assert _changed(out[1:2], base[1:2]).all()
  # Both dropped rows see the same null text: with equal noisy inputs and timesteps they agree.
  same = {**inputs, "noisy_embeds": jnp.repeat(inputs["noisy_embeds"][:1], B, 0), "timesteps": jnp.full((B,), 411)}
  out = prior(same)
  np.testing.assert_allclose(out[0], out[2], atol=1e-5)


def test_embedding_space_keeps_the_direction_at_unit_component_variance():
  x = jax.random.normal(jax.random.key(0), (4, 64)) * jnp.array([[0.1], [1.0], [7.0], [30.0]])
  y = embedding_space(x)
  np.testing.assert_allclose(np.linalg.norm(y, axis=-1), 8.0, rtol=1e-5)
  np.testing.assert_allclose(y / 8.0, x / np.linalg.norm(x, axis=-1, keepdims=True), atol=1e-6)


def test_flops_count_matches_the_parameter_count():
  """Dense FLOPs are 2 per weight per position: at width >> the sequence, the transformer's count is
  2 x (its weights) x S per caption, and the model holds those weights."""
  config = PriorConfig(embed_dim=8, text_width=8, max_text_tokens=1, width=256, depth=3, heads=4, ff_mult=2)
  params = jax.eval_shape(lambda key: DiffusionPrior(config).init(key, **example_inputs(config)), jax.random.key(0))
  kernels = [p for p in jax.tree_util.tree_leaves(params["params"]["transformer"]) if len(p.shape) == 2]
  blocks = sum(np.prod(p.shape) for p in kernels)
  assert blocks == config.depth * (4 + 3 * config.ff_mult) * 256 ** 2
  flops = prior_flops(config, batch=2)
  attention = 2 * config.depth * 4 * config.sequence_length ** 2 * 256
  expected_dense = 2 * 2 * config.sequence_length * blocks
  assert expected_dense < flops["forward"] - attention < 1.02 * expected_dense
  assert flops["train_step"] == 3 * flops["forward"]
