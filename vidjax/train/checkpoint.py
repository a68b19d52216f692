"""Orbax checkpoints of a run: TrainState, data iterator positions, config and code version.

One finished step on disk:
  <directory>/<step>/state/          the TrainState pytree (OCDBT); restored into target shardings
  <directory>/<step>/data_state/     process_<i>-of-<n>.json: each process's data iterator position
  <directory>/<step>/config/         the config as JSON
  <directory>/<step>/_CHECKPOINT_METADATA   custom_metadata = the code version (see `code_version`)
  <directory>/<step>/commit_success.txt     written last: the step is finished

Unfinished saves (orbax 0.12.8). Orbax writes `commit_success.txt` into a step (and each item)
once every process has written it. Its default on POSIX paths, ATOMIC_RENAME, writes into
`<step>.orbax-checkpoint-tmp`, adds the marker, then renames; its step listing then trusts the
name alone, so a `<step>` directory without the marker (an interrupted copy, a non-atomic rename)
would count as finished, be restored, and make `should_save` skip every step up to it. Its
in-memory step list also holds a save still in flight. We use COMMIT_FILE mode (orbax's default on
GCS): steps are written in place, and a step is finished only if its name is a plain number and it
holds the marker. A process killed mid-save leaves `<step>/` without it (or, from an
ATOMIC_RENAME writer, a `*.orbax-checkpoint-tmp` directory, which never matches the name
pattern); both are ignored, and orbax deletes the stale `<step>/` before writing that step again.
`latest_step` reads the disk, not the in-memory list.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

import vidjax
from vidjax import tree
from vidjax.errors import InputError

_ATOMICITY = ocp.options.AtomicityOptions(mode=ocp.options.AtomicityMode.COMMIT_FILE)
_STEP_NAMES = ocp.path.step.standard_name_format(atomicity_options=_ATOMICITY)
# Replica-parallel saves split each replicated array among the devices holding it, and every
# distinct slice shape is one more XLA compile: about 30 s for a tiny model's ~300 params on 8 CPU
# devices at the first save of each process, where the whole save then takes under 1 s. Splitting
# pays only for arrays big enough to be bandwidth-bound, so slices stay whole below 16 MiB.
_MIN_SLICE_BYTES = 16 * 2**20
_ARRAYS = ocp.type_handlers.create_type_handler_registry(
    (jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=_MIN_SLICE_BYTES)))


def _process_file() -> str:
  return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


class _ProcessJsonHandler(ocp.CheckpointHandler):
  """One JSON file per process: data iterators are per process (like grain's orbax handler)."""

  def save(self, directory: epath.Path, args: _ProcessJsonSave):
    (directory / _process_file()).write_text(json.dumps(args.value))

  def restore(self, directory: epath.Path, args: _ProcessJsonRestore | None = None) -> Any:
    path = directory / _process_file()
    if not path.exists():
      saved = sorted(p.name for p in directory.iterdir())
      raise InputError(str(directory), f"no data iterator state {path.name} (saved: {saved})",
                       "resume with the process count the checkpoint was saved with")
    return json.loads(path.read_text())


@ocp.args.register_with_handler(_ProcessJsonHandler, for_save=True)
@dataclasses.dataclass
class _ProcessJsonSave(ocp.args.CheckpointArgs):
  value: Any


@ocp.args.register_with_handler(_ProcessJsonHandler, for_restore=True)
@dataclasses.dataclass
class _ProcessJsonRestore(ocp.args.CheckpointArgs):
  pass


@functools.cache
def running_code_version() -> dict[str, Any]:
  """{'vidjax_version', 'git_commit', 'git_dirty'} of the running package source.

  The git fields are None unless the package is tracked by a git checkout (an installed wheel
  inside some other repository must not report that repository's commit).
  """
  source = os.path.dirname(os.path.abspath(vidjax.__file__))
  git = lambda *args: subprocess.run(["git", "-C", source, *args], capture_output=True, text=True,
                                     timeout=10, check=True).stdout.strip()
  try:
    git("ls-files", "--error-unmatch", "--", "__init__.py")
    commit, dirty = git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no", "--", "."))
  except (OSError, subprocess.SubprocessError):
    commit, dirty = None, None
  return {"vidjax_version": vidjax.__version__, "git_commit": commit, "git_dirty": dirty}


def _json_ready(value: Any, name: str) -> Any:
  """`value` as plain JSON types (tuples become lists), or an InputError before anything is written."""
  value = value.to_dict() if hasattr(value, "to_dict") else value
  try:
    return json.loads(json.dumps(value))
  except (TypeError, ValueError) as e:
    raise InputError(name, f"is not JSON-serialisable ({e})",
                     "pass plain dicts, lists, strings and numbers (ConfigDict.to_dict())") from e


def _check_tree(saved: Any, target: Any, where: str) -> None:
  """Raises an InputError listing the first paths where the checkpoint and the target differ.

  Dtypes may differ (orbax casts on restore, e.g. float32 weights into a bfloat16 target).
  """
  saved = tree.flatten_pytree(saved)
  target = tree.flatten_pytree(ocp.tree.serialize_tree(target, keep_empty_nodes=True))
  problems = [f"missing from the checkpoint: {p}" for p in target if p not in saved]
  problems += [f"not in the target: {p}" for p in saved if p not in target]
  problems += [f"shape {tuple(saved[p].shape)} saved vs {tuple(target[p].shape)} wanted: {p}"
               for p in target if p in saved and tuple(saved[p].shape) != tuple(target[p].shape)]
  if problems:
    shown = "; ".join(problems[:5])
    raise InputError(where, f"the checkpoint's tree does not match the target ({len(problems)} "
                     f"differences; first: {shown})", "restore with the model and optimizer config "
                     "the checkpoint was saved with")


class Checkpointer:
  """Async, atomic, keep-N checkpoints of a training run in `directory` (see the module docstring).

  Args:
    directory: the run's checkpoint directory (the parent of the step directories). It is
      created by the first save, so opening a wrong path to read creates nothing.
    keep: how many finished steps to keep; older ones are deleted after each save.
    async_save: return from `save` once arrays are copied off the devices and write in the
      background (the next save, `wait_until_finished` and `close` wait for it).
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
    self.directory = epath.Path(os.path.abspath(os.fspath(directory)))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=False, atomicity_options=_ATOMICITY,
                                           enable_async_checkpointing=async_save)
    handlers = {"state": ocp.PyTreeCheckpointHandler(type_handler_registry=_ARRAYS), "data_state": _ProcessJsonHandler(),
                "config": ocp.JsonCheckpointHandler()}
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
    # step -> saved tree of array metadata: orbax takes seconds to read it even for a tiny checkpoint
    # (2.6 s for the Gen-1 chain test's), and a finished step never changes (`save` skips old steps).
    self._saved_trees: dict[int, Any] = {}

  def save(self, step: int, state: Any, *, data_state: Mapping[str, Any] | None, config: Mapping[str, Any],
           force: bool = False) -> bool:
    """Starts saving `state` (a TrainState of sharded arrays) as step `step`.

    Args:
      step: the step number; steps not above the latest finished one are skipped.
      state: the pytree to save.
      data_state: this process's data iterator state (`Loader.get_state()`), JSON-serialisable.
      config: the run's config (a dict or ConfigDict), saved as JSON.
      force: save even where orbax's save policy would skip.
    Returns:
      Whether a save was started.
    Raises:
      InputError: `data_state` or `config` is not JSON-serialisable.
    """
    args = ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                              data_state=_ProcessJsonSave(_json_ready(data_state, "data_state")),
                              config=ocp.args.JsonSave(_json_ready(config, "config")))
    return self._manager.save(step, args=args, force=force, custom_metadata=running_code_version())

  def finished_steps(self) -> list[int]:
    """Finished steps on disk, ascending; a save in flight or cut off is not among them."""
    return sorted(metadata.step for metadata in _STEP_NAMES.find_all(self.directory))

  def latest_step(self) -> int | None:
    return max(self.finished_steps(), default=None)

  def code_version(self, step: int | None = None) -> dict[str, Any]:
    """The `running_code_version()` recorded by the save of `step` (default the latest)."""
    step = self._finished_step(step)
    return dict(self._manager.metadata(step).custom_metadata or {})

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """Restores step `step` (default the latest finished one) into `abstract_state`'s shardings.

    Args:
      abstract_state: the TrainState as jax.ShapeDtypeStructs whose `.sharding` is where each
        array should land, on any mesh (a (4, 2) checkpoint restores onto (8, 1) or (1, 1)); leaves
        without a sharding land on the first device.
      step: which step; default the latest finished one.
    Returns:
      (state, data_state, config): this process's data iterator state (None if none was saved)
      and the saved config dict.
    Raises:
      InputError: no finished vidjax checkpoint, no such step, or a tree that does not match.
    """
    step = self._finished_step(step)
    version = self.code_version(step)
    if version.get("vidjax_version") != vidjax.__version__:
      logging.warning("%s/%d was saved by vidjax %s; this is %s", self.directory, step,
                      version.get("vidjax_version"), vidjax.__version__)
    # A target straight from jax.eval_shape has no shardings (the single-device VAE and CLIP stages):
    # its arrays land on the first device (Orbax cannot restore a leaf that names no sharding).
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract_state = jax.tree_util.tree_map(
        lambda s: s if getattr(s, "sharding", None) is not None else jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                                                         sharding=device),
        abstract_state)
    state = self._restore_state(step, abstract_state)
    rest = self._manager.restore(step, args=ocp.args.Composite(data_state=_ProcessJsonRestore(),
                                                               config=ocp.args.JsonRestore()))
    return state, rest["data_state"], rest["config"]

  def saved_config(self, step: int | None = None) -> dict[str, Any]:
    """The run config saved with step `step` (default the latest finished one), as a dict."""
    step = self._finished_step(step)
    return self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def _saved_tree(self, step: int) -> Any:
    """The saved state's tree of array metadata, as nested dicts and lists (read once per step)."""
    if step not in self._saved_trees:
      self._saved_trees[step] = self._manager.item_metadata(step)["state"].tree
    return self._saved_trees[step]

  def _restore_state(self, step: int, target: Any, *, partial: bool = False) -> Any:
    """The 'state' item into `target`'s shardings; `partial` reads only target's subtrees (any paths of
    {'params': ..., 'ema_params': ...})."""
    saved = self._saved_tree(step)
    if partial:  # compare the parts that will be read
      wanted = tree.flatten(target)
      saved = tree.unflatten({path: leaf for path, leaf in tree.flatten(saved).items() if path in wanted})
    _check_tree(saved, target, f"{self.directory}/{step}")
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    return self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        target, restore_args=restore_args, partial_restore=partial)))["state"]

  def _finished_step(self, step: int | None) -> int:
    """`step`, or the latest finished one, checked to be a finished vidjax checkpoint."""
    steps = self.finished_steps()
    if not steps:
      raise InputError(str(self.directory), "is not a vidjax checkpoint directory (no finished step "
                       "directories <step>/ with commit_success.txt)", "pass the run's checkpoint directory, "
                       "the parent of the step directories")
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise InputError(str(self.directory), f"has no finished checkpoint at step {step} (finished: {steps})",
                       "pick one of the finished steps, or omit the step to take the latest")
    if not (self.directory / str(step) / "state").is_dir():
      raise InputError(f"{self.directory}/{step}", "is not a vidjax checkpoint (no 'state' item)",
                       "pass a directory written by vidjax.train.checkpoint.Checkpointer")
    return step

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for a save in flight and releases orbax's threads."""
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def load_params(path: str | os.PathLike, abstract_params: Mapping[str, Any] | None = None, *,
                use_ema: bool = False) -> dict[str, Any]:
  """Weights only, from a training checkpoint directory's latest step (for `--init_from`).

  A partial read: the optimizer state, data state and step are not read.

  Args:
    path: the run's checkpoint directory.
    abstract_params: {component: tree of ShapeDtypeStructs with target shardings}, like
      TrainState.params; None reads every saved component as it was saved, onto one device (for
      `init_from` into a model of another structure, merged by `surgery.merge_params`).
    use_ema: take the EMA weights where the checkpoint has them (the trainable params); the
      others (frozen ones) come from params.
  Raises:
    InputError: not a finished vidjax checkpoint, or weights that do not match `abstract_params`.
  """
  with Checkpointer(path, async_save=False) as checkpointer:
    step = checkpointer._finished_step(None)
    if abstract_params is None:
      device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      abstract_params = jax.tree_util.tree_map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), checkpointer._saved_tree(step)["params"],
          is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
    saved_ema = checkpointer._saved_tree(step).get("ema_params", {}) if use_ema else {}
    wanted = tree.flatten(abstract_params)
    ema = {path: wanted.pop(path) for path in tree.flatten(saved_ema) if path in wanted}
    # Every param has an EMA where all of them train: then params are not read at all (an empty
    # subtree is no restore target).
    target = {"params": tree.unflatten(wanted)} if wanted else {}
    if ema:
      target["ema_params"] = tree.unflatten(ema)
    restored = checkpointer._restore_state(step, target, partial=True)
  return tree.unflatten({**tree.flatten(restored.get("params", {})), **tree.flatten(restored.get("ema_params", {}))})
