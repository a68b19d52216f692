"""The init generator (`layers.INIT_RNG`): the statistics of a real generator, and sharding-invariant draws."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from vidjax.models import layers

N = 200_003


def _key(seed=0):
  return layers.init_key(jax.random.key(seed))


def test_draws_have_the_moments_and_the_bit_balance_of_a_real_generator():
  normal = np.asarray(jax.random.normal(_key(), (N,)))
  assert abs(normal.mean()) < 0.01 and abs(normal.std() - 1) < 0.01
  truncated = np.asarray(jax.random.truncated_normal(_key(), -2.0, 2.0, (N,)))
  assert truncated.min() >= -2 and truncated.max() <= 2 and abs(truncated.std() - 0.8796) < 0.01
  for width, dtype in ((32, jnp.uint32), (16, jnp.uint16), (8, jnp.uint8)):  # bf16 draws ask for 16 bits
    bits = np.asarray(jax.random.bits(_key(1), (N,), dtype)).astype(np.uint32)
    ones = (bits[:, None] >> np.arange(width, dtype=np.uint32)) & 1
    assert np.all(np.abs(ones.mean(axis=0) - 0.5) < 0.01), width  # every bit position fair


def test_derived_keys_are_distinct_and_their_draws_uncorrelated():
  key = _key()
  split = jax.random.split(key, 1000)
  folded = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(1000))
  data = np.concatenate([jax.random.key_data(split), jax.random.key_data(folded)])
  assert len({tuple(row) for row in data.tolist()}) == 2000  # fold_in(key, i) is never split(key)[i]
  draws = np.asarray(jax.vmap(lambda k: jax.random.normal(k, (4096,)))(jnp.concatenate([split[:50], folded[:50]])))
  corr = np.corrcoef(draws)
  assert np.abs(corr[~np.eye(100, dtype=bool)]).max() < 0.08  # 4096 samples: |r| ~ 0.016 by chance
  np.testing.assert_array_equal(jax.random.normal(_key(3), (7,)), jax.random.normal(_key(3), (7,)))
  assert not np.allclose(jax.random.normal(_key(3), (7,)), jax.random.normal(_key(4), (7,)))


def test_a_sharded_draw_gives_each_device_its_shard_of_the_one_device_values():
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  draw = lambda key: jax.random.truncated_normal(key, -2.0, 2.0, (24, 10))
  sharded = jax.jit(draw, out_shardings=NamedSharding(mesh, P("data", "model")))(_key(5))
  assert len(sharded.addressable_shards) == 8
  np.testing.assert_array_equal(np.asarray(sharded), np.asarray(jax.jit(draw)(_key(5))))
