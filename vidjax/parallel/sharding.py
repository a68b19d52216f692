"""Logical axis rules -> NamedShardings for params and batches; sharded init; sharding reports.

Params carry logical axis names (`vidjax.models.layers`); rules map them to mesh axes. A rule
maps a name to one mesh axis or a tuple of them; flax applies rules in order and gives a mesh
axis to at most one dimension of an array, so the first matching rule wins (for activations
('batch', ..., 'embed') the batch takes 'fsdp' and 'embed' stays whole).

Typical use:
  mesh = make_mesh({'data': -1, 'fsdp': 8})
  variables, shardings = sharded_init(model, mesh, DEFAULT_RULES, rng, **init_inputs(config))
  step = jax.jit(train_step, in_shardings=(shardings, batch_sharding(mesh)), ...)
  with activation_sharding(mesh, DEFAULT_RULES):
    step(variables, global_batch(local_batch, mesh))
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Mapping

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from vidjax.errors import ConfigError
from vidjax.tree import flatten_pytree

LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

BATCH_AXES = ("data", "fsdp")

# FSDP + data parallelism. Every big weight has exactly one of 'embed' (dense (in, out), on
# whichever side is the model width) or 'conv_out' (conv (..., in, out)); sharding that one dim
# over 'fsdp' splits every large kernel. 'embed' comes first so that time_emb_proj
# ('embed', 'conv_out') uses it. Names without a rule ('mlp', 'heads', 'conv_in', the taps
# 'conv_h'/'conv_w'/'conv_t', 'norm', 'height', 'width') are replicated.
DEFAULT_RULES: LogicalRules = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("conv_out", "fsdp"),
)


def _fit(spec: PartitionSpec, shape: tuple[int, ...], mesh: jax.sharding.Mesh) -> PartitionSpec:
  """Keeps, per dim, the mesh axes (in order) whose running product divides the dim size.

  A dim that an axis does not divide (a width of 13 over fsdp=2) is left whole for that axis, so
  tiny test models and odd real widths still shard wherever they can instead of failing.
  """
  fitted = []
  for size, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    kept, parts = [], 1
    for axis in axes:
      if size % (parts * mesh.shape[axis]) == 0:
        kept.append(axis)
        parts *= mesh.shape[axis]
    fitted.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return PartitionSpec(*fitted)


def unbox(tree: Any) -> Any:
  """Strips flax's Partitioned boxes without the sharding constraint that `nn.unbox` adds under a mesh."""
  return jax.tree.map(lambda x: x.value if isinstance(x, nn.Partitioned) else x, tree,
                      is_leaf=lambda x: isinstance(x, nn.Partitioned))


def param_shardings(abstract_boxed: Any, mesh: jax.sharding.Mesh, rules: LogicalRules) -> Any:
  """NamedShardings for a boxed variables tree (from `jax.eval_shape(model.init, ...)`).

  Logical names are mapped by `rules`; then a mesh axis that does not divide a dim is dropped
  for that dim (the dim is replicated over it), see `_fit`. Leaves without names are replicated.

  Returns:
    A tree with the unboxed structure of `abstract_boxed` and a NamedSharding per leaf.
  """
  mesh_specs = nn.logical_to_mesh(nn.get_partition_spec(abstract_boxed), rules)
  return jax.tree.map(lambda x, spec: NamedSharding(mesh, _fit(spec, x.shape, mesh)),
                      unbox(abstract_boxed), mesh_specs)


def abstract_init(model: nn.Module, mesh: jax.sharding.Mesh, rules: LogicalRules, rng: jax.Array,
                  *init_args, **init_kwargs) -> Any:
  """`model.init`'s unboxed variables as ShapeDtypeStructs carrying their target shardings.

  Allocates nothing; this is also the target tree an Orbax restore needs.
  """
  boxed = jax.eval_shape(lambda key: model.init(key, *init_args, **init_kwargs), rng)
  return jax.tree.map(lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      unbox(boxed), param_shardings(boxed, mesh, rules))


def sharded_init(model: nn.Module, mesh: jax.sharding.Mesh, rules: LogicalRules, rng: jax.Array,
                 *init_args, **init_kwargs) -> tuple[Any, Any]:
  """Initialises `model` straight into its shardings: each device computes only its shards.

  No device or host ever holds a whole sharded param: XLA partitions the init computation, and
  jax's (default) partitionable threefry draws the same numbers whatever the mesh.

  Args:
    model: a linen module whose params carry logical names.
    mesh, rules: where and how to shard.
    rng: the init PRNG key.
    *init_args, **init_kwargs: example inputs for `model.init` (e.g. `unet.init_inputs(config)`).
  Returns:
    (variables, shardings): `model.init`'s variables ({'params': ...}), unboxed and sharded, and
    the matching tree of NamedShardings (for `jax.jit` in/out shardings).
  """
  shardings = jax.tree.map(lambda x: x.sharding, abstract_init(model, mesh, rules, rng, *init_args, **init_kwargs))
  init = jax.jit(lambda key: unbox(model.init(key, *init_args, **init_kwargs)), out_shardings=shardings)
  return init(rng), shardings


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Sharding of arrays whose leading dim is the global batch: split over data x fsdp."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Global arrays from each process's own examples (every field has a leading batch dim).

  Each process passes its local (B_local, ...) slice; the result is (B_local * processes, ...),
  sharded by `batch_sharding`.

  Raises:
    ConfigError: the global batch does not divide over the data x fsdp devices.
  """
  sharding, shards = batch_sharding(mesh), math.prod(mesh.shape[axis] for axis in BATCH_AXES)
  out = {}
  for name, local in local_batch.items():
    total = local.shape[0] * jax.process_count()
    if total % shards:
      raise ConfigError(f"batch field {name!r}",
                        f"a global batch of {total} ({local.shape[0]} per process) does not split over "
                        f"data x fsdp = {shards} devices", f"use a global batch size that is a multiple of {shards}")
    out[name] = jax.make_array_from_process_local_data(sharding, local)
  return out


@contextlib.contextmanager
def activation_sharding(mesh: jax.sharding.Mesh, rules: LogicalRules) -> Iterator[None]:
  """Makes models' `nn.with_logical_constraint` calls constrain activations on `mesh`.

  Without it they are no-ops (flax skips them when no rules or mesh are set). It needs
  `jax.set_mesh` (in jax 0.10 `with mesh:` no longer sets the mesh flax reads). Constraints are
  baked in when a function is traced: enter this before a jitted step's first call.
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def sharding_snapshot(tree: Any) -> dict[str, str]:
  """{'params/conv_in/kernel': "P(None, None, None, 'fsdp')", ...} for golden files.

  `tree` holds NamedShardings, or arrays / ShapeDtypeStructs carrying a `.sharding`.
  """
  return {path: str(getattr(leaf, "sharding", leaf).spec) for path, leaf in flatten_pytree(tree).items()}


def _megabytes(num_bytes: int) -> str:
  return f"{num_bytes / 2**20:,.2f} MiB"


def describe(tree: Any) -> str:
  """One line: how many params / bytes are sharded vs replicated, and the bytes each device holds.

  `tree` holds sharded arrays or ShapeDtypeStructs with a `.sharding` (see `abstract_init`).
  """
  stats = {True: np.zeros(3, np.int64), False: np.zeros(3, np.int64)}  # sharded? -> (arrays, params, bytes)
  per_device = 0
  for leaf in jax.tree.leaves(tree):
    size, itemsize = math.prod(leaf.shape), np.dtype(leaf.dtype).itemsize
    stats[not leaf.sharding.is_fully_replicated] += (1, size, size * itemsize)
    per_device += math.prod(leaf.sharding.shard_shape(leaf.shape)) * itemsize
  arrays, params, nbytes = stats[True] + stats[False]
  sharded, replicated = (f"{a} arrays, {p:,} params ({_megabytes(b)})" for a, p, b in (stats[True], stats[False]))
  return (f"{params:,} params ({_megabytes(nbytes)}) in {arrays} arrays: sharded {sharded} "
          f"[{100 * stats[True][1] / max(params, 1):.1f}%], replicated {replicated}; "
          f"per device {_megabytes(per_device)}")
