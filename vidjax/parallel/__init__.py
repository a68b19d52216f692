"""Meshes, logical-axis sharding rules, sharded init and global batches (see DESIGN.md, "Sharding")."""

from __future__ import annotations

from vidjax.parallel.mesh import MESH_AXES, make_mesh, maybe_initialize_distributed
from vidjax.parallel.sharding import (
    BATCH_AXES,
    DEFAULT_RULES,
    LogicalRules,
    abstract_init,
    activation_sharding,
    batch_sharding,
    describe,
    global_batch,
    param_shardings,
    sharded_init,
    sharding_snapshot,
    unbox,
)

__all__ = [
    "BATCH_AXES",
    "DEFAULT_RULES",
    "MESH_AXES",
    "LogicalRules",
    "abstract_init",
    "activation_sharding",
    "batch_sharding",
    "describe",
    "global_batch",
    "make_mesh",
    "maybe_initialize_distributed",
    "param_shardings",
    "sharded_init",
    "sharding_snapshot",
    "unbox",
]
