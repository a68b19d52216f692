"""Device meshes over ('data', 'fsdp', 'sequence') and multi-host start-up.

The mesh spans every process's devices (`jax.devices()`), so on a cluster
`jax.distributed.initialize()` must run before anything touches a JAX backend;
`maybe_initialize_distributed()` does that when a launcher's environment is present. Axis order
matters for speed: later axes get the closer (faster-linked) devices, and FSDP's per-layer
all-gathers need more bandwidth than the data axis's once-per-step gradient reduction.
'sequence' is reserved for time/sequence parallelism and is 1 unless a config asks for more.
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import jax

from vidjax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "sequence")

# Environment variables by which a launcher announces a multi-process job. Each predicate sees
# the value; a single SLURM task or one TPU host needs no coordination service.
_CLUSTER_ENV = {
    "JAX_COORDINATOR_ADDRESS": bool,
    "SLURM_NTASKS": lambda value: value.isdigit() and int(value) > 1,
    "OMPI_MCA_orte_hnp_uri": bool,
    "TPU_WORKER_HOSTNAMES": lambda value: "," in value,
    "TPU_PROCESS_ADDRESSES": lambda value: "," in value,
}


def _resolve_shape(shape: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Sizes in MESH_AXES order; missing axes are 1 and one -1 takes the remaining devices."""
  shown = dict(shape)
  unknown = sorted(set(shape) - set(MESH_AXES))
  if unknown:
    raise ConfigError(f"mesh shape {shown}", f"unknown axes {unknown}", f"use only the axes {MESH_AXES}")
  sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
  if any(size == 0 or size < -1 for size in sizes):
    raise ConfigError(f"mesh shape {shown}", "axis sizes must be positive (or -1 for one axis)",
                      "give each axis a positive size")
  fill = [i for i, size in enumerate(sizes) if size == -1]
  if len(fill) > 1:
    raise ConfigError(f"mesh shape {shown}", "more than one axis is -1", "set at most one axis to -1")
  known = math.prod(size for size in sizes if size != -1)
  if fill and num_devices % known:
    raise ConfigError(f"mesh shape {shown}",
                      f"the fixed axes multiply to {known}, which does not divide the {num_devices} devices "
                      "(all processes)", f"make the fixed sizes divide {num_devices}")
  if fill:
    sizes[fill[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(f"mesh shape {shown}",
                      f"the axes multiply to {math.prod(sizes)} but there are {num_devices} devices (all processes)",
                      f"make the sizes multiply to {num_devices}, or set one axis to -1 to take the rest")
  return tuple(sizes)


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A mesh with axes ('data', 'fsdp', 'sequence'), all of Auto type.

  Auto (not `jax.make_mesh`'s default Explicit) axes let XLA choose intermediate shardings,
  which an FSDP matmul needs (see DESIGN.md, "Sharding").

  Args:
    shape: axis name -> size, e.g. {'data': -1, 'fsdp': 8}; missing axes are 1, one axis may be
      -1 to take the remaining devices.
    devices: the devices to lay out; default all devices of all processes.
  Returns:
    The mesh; `mesh.shape` gives every axis, including size-1 ones.
  Raises:
    ConfigError: unknown axes, bad sizes, or sizes that do not multiply to the device count.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = _resolve_shape(shape, len(devices))
  return jax.make_mesh(sizes, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def maybe_initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
  """Starts `jax.distributed` for a multi-process job; call it first thing in `main`.

  It runs when any argument is given (they are passed on), or when a launcher's environment is
  present (JAX_COORDINATOR_ADDRESS, SLURM with more than one task, Open MPI, multi-host TPU);
  JAX then detects whatever is not given. Single-process runs are left alone.

  Returns:
    Whether the distributed runtime is initialised after the call.
  """
  if jax.distributed.is_initialized():
    return True
  # JAX reads the coordinator from JAX_COORDINATOR_ADDRESS but not the process count and id; our
  # local launcher (launch/local.py) passes them as VIDJAX_NUM_PROCESSES / VIDJAX_PROCESS_ID.
  from_env = lambda name: int(os.environ[name]) if name in os.environ else None
  num_processes = num_processes if num_processes is not None else from_env("VIDJAX_NUM_PROCESSES")
  process_id = process_id if process_id is not None else from_env("VIDJAX_PROCESS_ID")
  explicit = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
  explicit = {name: value for name, value in explicit.items() if value is not None}
  detected = any(name in os.environ and test(os.environ[name]) for name, test in _CLUSTER_ENV.items())
  if not explicit and not detected:
    return False
  jax.distributed.initialize(**explicit)
  return True
