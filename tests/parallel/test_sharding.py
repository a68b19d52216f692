"""Meshes, logical-axis rules, sharded init and sharded forward on 8 fake CPU devices.

The golden file `golden/unet_small_shardings.json` pins the PartitionSpec of every param of the
small UNet under DEFAULT_RULES. After an intended change to the rules or the model, regenerate it
with `VIDJAX_UPDATE_GOLDEN=1 pytest tests/parallel/test_sharding.py` and review the diff.
"""

from __future__ import annotations

import json
import math
import os
import pathlib

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vidjax import parallel
from vidjax.errors import ConfigError
from vidjax.models.unet import UNetConfig, VideoUNet, init_inputs

GOLDEN = pathlib.Path(__file__).parent / "golden" / "unet_small_shardings.json"
# Widths divisible by fsdp=2 except the cross-attention width 13, so that to_k / to_v show the
# dropped-axis rule; temporal layers as in Make-Your-Video.
SMALL = UNetConfig(in_channels=5, block_out_channels=(16, 32), layers_per_block=1, attention_levels=(True, False),
                   num_attention_heads=(2, 4), cross_attention_dim=13, norm_num_groups=8, temporal_conv="pseudo3d",
                   temporal_attention=True, temporal_relative_position=4, temporal_causal=True)
BATCH, FRAMES = 8, 2  # the batch splits over data x fsdp = 8 devices


@pytest.fixture(scope="module")
def mesh():
  return parallel.make_mesh({"data": 4, "fsdp": 2})


@pytest.fixture(scope="module")
def small_unet(mesh):
  """(model, variables, shardings): the small UNet initialised straight into its shardings."""
  model = VideoUNet(SMALL)
  variables, shardings = parallel.sharded_init(model, mesh, parallel.DEFAULT_RULES, jax.random.key(0),
                                               **init_inputs(SMALL, frames=FRAMES))
  return model, variables, shardings


def _flat(tree):
  return dict(zip(parallel.sharding_snapshot(tree), jax.tree.leaves(tree)))


def test_make_mesh_fills_the_minus_one_axis_with_auto_axes():
  mesh = parallel.make_mesh({"fsdp": 2, "data": -1})
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "sequence": 1}
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 3
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())
  subset = parallel.make_mesh({"sequence": 2, "data": 2}, devices=jax.devices()[:4])
  assert dict(subset.shape) == {"data": 2, "fsdp": 1, "sequence": 2}


@pytest.mark.parametrize("shape, expected", [
    ({"data": 3}, "multiply to 3 but there are 8 devices"),
    ({"data": 2, "fsdp": 2}, "multiply to 4 but there are 8 devices"),
    ({"data": -1, "fsdp": 3}, "fixed axes multiply to 3, which does not divide the 8 devices"),
    ({"data": -1, "fsdp": -1}, "more than one axis is -1"),
    ({"data": 0, "fsdp": -1}, "must be positive"),
    ({"model": 8}, "unknown axes ['model']"),
])
def test_make_mesh_rejects_bad_shapes_naming_shape_and_fix(shape, expected):
  with pytest.raises(ConfigError) as error:
    parallel.make_mesh(shape)
  assert expected in str(error.value)
  assert str(error.value).startswith(f"mesh shape {shape}") and "Fix:" in str(error.value)


def test_maybe_initialize_distributed_only_for_multi_process_launches(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
  for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_MCA_orte_hnp_uri", "TPU_WORKER_HOSTNAMES",
               "TPU_PROCESS_ADDRESSES"):
    monkeypatch.delenv(name, raising=False)
  assert not parallel.maybe_initialize_distributed()
  monkeypatch.setenv("SLURM_NTASKS", "1")
  assert not parallel.maybe_initialize_distributed() and not calls
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert parallel.maybe_initialize_distributed() and calls == [{}]
  monkeypatch.delenv("SLURM_NTASKS")
  assert parallel.maybe_initialize_distributed(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1)
  assert calls[-1] == dict(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1)


def test_param_shardings_drop_mesh_axes_that_do_not_divide(mesh):
  boxed = lambda shape, names: nn.LogicallyPartitioned(jax.ShapeDtypeStruct(shape, np.float32), names)
  tree = {"a": boxed((12, 7), ("embed", "mlp")), "b": boxed((16, 3), ("embed", "mlp")),
          "c": boxed((6, 3), ("embed", "mlp")), "d": boxed((7, 3), ("embed", "mlp")),
          "e": boxed((3, 3, 16, 5), ("conv_h", "conv_w", "conv_in", "conv_out")),
          "plain": jax.ShapeDtypeStruct((5,), np.float32)}
  rules = (("embed", ("data", "fsdp")), ("conv_out", "fsdp"), ("conv_in", "fsdp"))
  specs = {k: s.spec for k, s in parallel.param_shardings(tree, mesh, rules).items()}
  assert specs == {"a": P("data", None), "b": P(("data", "fsdp"), None), "c": P("fsdp", None), "d": P(None, None),
                   # conv_out 5 is not divisible; fsdp then stays unused (no fallback to conv_in).
                   "e": P(None, None, None, None), "plain": P(None)}


def test_sharded_init_splits_big_kernels_and_never_materialises_them_whole(small_unet):
  _, variables, shardings = small_unet
  assert jax.tree.structure(variables) == jax.tree.structure(shardings)
  leaves = _flat(variables)
  spec = lambda path: leaves[f"params/{path}"].sharding.spec
  assert spec("conv_in/kernel") == P(None, None, None, "fsdp")  # (3, 3, 5, 16): conv_out
  assert spec("time_embedding/linear_1/kernel") == P("fsdp", None)  # ('embed', 'mlp')
  assert spec("down_blocks_0/attentions_0/proj_out/kernel") == P(None, "fsdp")  # ('mlp', 'embed')
  assert spec("down_blocks_0/attentions_0/transformer_blocks_0/attn2/to_k/kernel") == P(None, None)  # 13 rows
  assert spec("down_blocks_0/resnets_0/norm1/scale") == P(None)
  for path, leaf in leaves.items():
    shard_sizes = {shard.data.size for shard in leaf.addressable_shards}
    if leaf.sharding.is_fully_replicated:
      assert leaf.size < 1000 and shard_sizes == {leaf.size}, path  # only small params stay whole
    else:
      assert [axis for axis in leaf.sharding.spec if axis] == ["fsdp"], path
      assert shard_sizes == {leaf.size // 2}, path  # fsdp = 2: every device holds exactly half
      assert len({str(shard.index) for shard in leaf.addressable_shards}) == 2, path


def test_describe_counts_sharded_and_replicated_params(small_unet):
  _, variables, _ = small_unet
  leaves = jax.tree.leaves(variables)
  sharded = [x for x in leaves if not x.sharding.is_fully_replicated]
  replicated = [x for x in leaves if x.sharding.is_fully_replicated]
  text = parallel.describe(variables)
  assert text.startswith(f"{sum(x.size for x in leaves):,} params")
  assert f"sharded {len(sharded)} arrays, {sum(x.size for x in sharded):,} params" in text
  assert f"replicated {len(replicated)} arrays, {sum(x.size for x in replicated):,} params" in text
  per_device = sum(x.addressable_shards[0].data.nbytes for x in leaves) / 2**20
  assert text.endswith(f"per device {per_device:,.2f} MiB")


def test_sharding_snapshot_matches_golden(small_unet):
  snapshot = parallel.sharding_snapshot(small_unet[2])
  if os.environ.get("VIDJAX_UPDATE_GOLDEN") == "1":
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")
  golden = json.loads(GOLDEN.read_text())
  changed = {k: (golden.get(k), snapshot.get(k)) for k in golden.keys() | snapshot.keys()
             if golden.get(k) != snapshot.get(k)}
  assert not changed, f"(golden, now) per param; see the module docstring to regenerate: {changed}"


def test_sharded_forward_equals_single_device_forward(mesh, small_unet):
  model, variables, shardings = small_unet
  rng = np.random.default_rng(0)
  # Perturb so that zero-initialised temporal projections take part in the comparison.
  host = jax.tree.map(lambda x: np.asarray(x) + 0.05 * rng.standard_normal(x.shape, np.float32), variables)
  batch = {"latents": rng.standard_normal((BATCH, FRAMES, 8, 8, SMALL.in_channels), np.float32),
           "timesteps": np.arange(BATCH, dtype=np.int32) * 111,
           "context": rng.standard_normal((BATCH, 3, SMALL.cross_attention_dim), np.float32)}
  forward = lambda params, b: model.apply(params, b["latents"], b["timesteps"], b["context"])
  reference = jax.jit(forward)(host, batch)
  assert "sharding_constraint" not in jax.jit(forward).lower(host, batch).as_text()

  with parallel.activation_sharding(mesh, parallel.DEFAULT_RULES):
    sharded_forward = jax.jit(forward, in_shardings=(shardings, parallel.batch_sharding(mesh)),
                              out_shardings=parallel.batch_sharding(mesh))
    params = jax.device_put(host, shardings)
    hlo = sharded_forward.lower(params, batch).as_text()
    out = sharded_forward(params, batch)
  # Every with_logical_constraint in the UNet became a batch-over-(data, fsdp) constraint.
  constraints = [line for line in hlo.splitlines() if "sdy.sharding_constraint" in line]
  assert constraints and all('[{"data", "fsdp"}, {}, {}, {}]' in line for line in constraints)
  assert out.sharding.spec == P(("data", "fsdp"))
  assert np.abs(np.asarray(reference)).max() > 0.1
  np.testing.assert_allclose(np.asarray(out), np.asarray(reference), atol=1e-5, rtol=0)


def test_global_batch_shards_the_leading_dim(mesh):
  local = {"latents": np.arange(8 * 3, dtype=np.float32).reshape(8, 3), "ids": np.arange(8, dtype=np.int32)}
  arrays = parallel.global_batch(local, mesh)
  for name, array in arrays.items():
    assert array.sharding == parallel.batch_sharding(mesh)
    assert {shard.data.shape[0] for shard in array.addressable_shards} == {1}
    np.testing.assert_array_equal(np.asarray(array), local[name])
  with pytest.raises(ConfigError, match="multiple of 8"):
    parallel.global_batch({"latents": np.zeros((6, 3), np.float32)}, mesh)


def test_sd2_unet_shards_almost_everything_without_allocating():
  mesh = parallel.make_mesh({"fsdp": -1})
  config = UNetConfig()
  abstract = parallel.abstract_init(VideoUNet(config), mesh, parallel.DEFAULT_RULES, jax.random.key(0),
                                    **init_inputs(config))
  leaves = jax.tree.leaves(abstract)
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  total = sum(math.prod(x.shape) for x in leaves)
  replicated = sum(math.prod(x.shape) for x in leaves if x.sharding.is_fully_replicated)
  assert 8.6e8 < total < 8.7e8 and replicated / total < 1e-3
  # conv_out (3, 3, 320, 4): 4 output channels do not split 8 ways, so it stays whole.
  assert parallel.sharding_snapshot(abstract)["params/conv_out/kernel"] == str(P(None, None, None, None))
