"""Checkpointer: bitwise round trip, restore across meshes, keep-N, unfinished saves, errors."""

from __future__ import annotations

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vidjax.errors import InputError
from vidjax.parallel.mesh import make_mesh
from vidjax.train.checkpoint import Checkpointer, load_params, running_code_version
from vidjax.train.state import TrainState

CONFIG = {"train": {"lr": 1e-4, "betas": (0.9, 0.99)}, "name": "toy"}


def _spec(shape: tuple[int, ...]) -> P:
  """Matrices split rows over 'data' and columns over 'fsdp'; the rest replicated."""
  return P("data", "fsdp") if len(shape) == 2 else P()


def _make_state(mesh: jax.sharding.Mesh, seed: int = 0) -> TrainState:
  """A TrainState with AdamW moments after one update, frozen params, EMA and raw key data."""
  keys = jax.random.split(jax.random.key(seed), 4)
  params = {"unet": {"kernel": jax.random.normal(keys[0], (8, 6)), "bias": jax.random.normal(keys[1], (6,))},
            "vae": {"kernel": jax.random.normal(keys[2], (8, 2), jnp.bfloat16)}}
  params = jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, _spec(x.shape))), params)
  tx = optax.multi_transform({"train": optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2)),
                              "freeze": optax.set_to_zero()}, {"unet": "train", "vae": "freeze"})
  updates, opt_state = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  params = optax.apply_updates(params, updates)
  return TrainState(step=jnp.array(7, jnp.int32), params=params, opt_state=opt_state,
                    ema_params={"unet": jax.tree.map(lambda x: x * 0.5, params["unet"])},
                    rng=jax.random.key_data(keys[3]))


def _abstract(state: TrainState, mesh: jax.sharding.Mesh):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, _spec(x.shape))),
                      state)


def _assert_bitwise_equal(actual, expected) -> None:
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert a.dtype == e.dtype and a.shape == e.shape
    assert np.asarray(a).tobytes() == np.asarray(e).tobytes()


@pytest.fixture(scope="module")
def mesh42():
  return make_mesh({"data": 4, "fsdp": 2})


@pytest.fixture
def saved(tmp_path, mesh42):
  """A checkpoint directory with steps 1 and 2 (step 2 holds `state`), and that state."""
  state = _make_state(mesh42)
  with Checkpointer(tmp_path / "ckpt") as checkpointer:
    checkpointer.save(1, _make_state(mesh42, seed=1), data_state={"position": 1}, config=CONFIG)
    checkpointer.save(2, state, data_state={"position": 2}, config=CONFIG)
  return tmp_path / "ckpt", state


def test_round_trip_is_bitwise_equal(saved, mesh42):
  path, state = saved
  assert state.params["unet"]["kernel"].sharding.spec == P("data", "fsdp")
  with Checkpointer(path) as checkpointer:
    assert checkpointer.latest_step() == 2
    restored, data_state, config = checkpointer.restore(_abstract(state, mesh42))
    assert checkpointer.code_version() == running_code_version()
  _assert_bitwise_equal(restored, state)
  assert isinstance(restored, TrainState) and isinstance(restored.opt_state, type(state.opt_state))
  assert data_state == {"position": 2}
  assert config == {"train": {"lr": 1e-4, "betas": [0.9, 0.99]}, "name": "toy"}  # JSON: tuples become lists
  assert running_code_version()["vidjax_version"] == "0.1.0"


@pytest.mark.parametrize("shape", [{"data": 8, "fsdp": 1}, {"data": 1, "fsdp": 1}])
def test_restore_onto_another_mesh(saved, shape):
  path, state = saved
  mesh = make_mesh(shape, devices=jax.devices()[:shape["data"] * shape["fsdp"]])
  target = _abstract(state, mesh)
  with Checkpointer(path) as checkpointer:
    restored, _, _ = checkpointer.restore(target, step=2)
  _assert_bitwise_equal(restored, state)
  for leaf, wanted in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
    assert leaf.sharding == wanted.sharding


def test_keeps_the_last_n(tmp_path, mesh42):
  state = _make_state(mesh42)
  with Checkpointer(tmp_path, keep=2) as checkpointer:
    for step in range(1, 5):
      assert checkpointer.save(step, state, data_state=None, config=CONFIG)
    checkpointer.wait_until_finished()
    assert checkpointer.finished_steps() == [3, 4]
    assert not checkpointer.save(4, state, data_state=None, config=CONFIG)  # not above the latest
    _, data_state, _ = checkpointer.restore(_abstract(state, mesh42))
  assert sorted(os.listdir(tmp_path)) == ["3", "4"]
  assert data_state is None


def test_unfinished_saves_are_never_the_latest(saved, mesh42):
  path, state = saved
  # What a SIGKILL leaves: an ATOMIC_RENAME writer's tmp directory (holding a finished-looking
  # copy), and a COMMIT_FILE writer's step directory without its marker and with a truncated file.
  shutil.copytree(path / "2", path / "3.orbax-checkpoint-tmp")
  shutil.copytree(path / "2", path / "4")
  os.remove(path / "4" / "commit_success.txt")
  biggest = max((p for p in (path / "4").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[:3])
  newer = _make_state(mesh42, seed=5)
  with Checkpointer(path) as checkpointer:
    assert checkpointer.latest_step() == 2
    restored, data_state, _ = checkpointer.restore(_abstract(state, mesh42))
    _assert_bitwise_equal(restored, state)
    assert data_state == {"position": 2}
    with pytest.raises(InputError, match="step 4"):
      checkpointer.restore(_abstract(state, mesh42), step=4)
    assert checkpointer.save(3, newer, data_state={"position": 3}, config=CONFIG)
    assert checkpointer.save(4, newer, data_state={"position": 4}, config=CONFIG)  # replaces the stale 4/
    checkpointer.wait_until_finished()
    assert checkpointer.latest_step() == 4
    restored, data_state, _ = checkpointer.restore(_abstract(state, mesh42))
  _assert_bitwise_equal(restored, newer)
  assert data_state == {"position": 4}


def test_a_save_in_flight_is_not_the_latest(tmp_path):
  state = {"w": jax.random.normal(jax.random.key(0), (2048, 2048))}  # 16 MiB: written in the background
  with Checkpointer(tmp_path) as checkpointer:
    checkpointer.save(1, state, data_state=None, config={})
    checkpointer.wait_until_finished()
    checkpointer.save(2, state, data_state=None, config={})
    latest = checkpointer.latest_step()
    finished = (tmp_path / "2" / "commit_success.txt").exists()
    assert latest == 1 or finished  # 2 only once its marker is written
  assert checkpointer.latest_step() == 2


def test_load_params_reads_weights_only(saved):
  path, state = saved
  mesh = make_mesh({"data": 8})
  abstract = _abstract(state, mesh).params
  _assert_bitwise_equal(load_params(path, abstract), state.params)
  ema = load_params(path, abstract, use_ema=True)
  _assert_bitwise_equal(ema["unet"], state.ema_params["unet"])
  _assert_bitwise_equal(ema["vae"], state.params["vae"])  # frozen: no EMA, taken from params
  assert ema["unet"]["kernel"].sharding == abstract["unet"]["kernel"].sharding


def test_tree_mismatch_lists_the_paths(saved, mesh42):
  path, state = saved
  target = _abstract(state, mesh42)
  params = dict(target.params, unet=dict(target.params["unet"], extra=jax.ShapeDtypeStruct((3,), jnp.float32)))
  params["vae"] = {"kernel": jax.ShapeDtypeStruct((8, 4), jnp.bfloat16)}
  with Checkpointer(path) as checkpointer, pytest.raises(InputError) as error:
    checkpointer.restore(target.replace(params=params))
  message = str(error.value)
  assert str(path) in message and "missing from the checkpoint: params/unet/extra" in message
  assert "shape (8, 2) saved vs (8, 4) wanted: params/vae/kernel" in message
  with pytest.raises(InputError, match="params/unet/extra"):
    load_params(path, params)


def test_errors_name_the_path(tmp_path, saved, mesh42):
  path, state = saved
  target = _abstract(state, mesh42)
  for wrong in (tmp_path / "missing", path / "2"):  # nothing there; a step directory
    with pytest.raises(InputError, match="not a vidjax checkpoint directory") as error:
      Checkpointer(wrong).restore(target)
    assert str(wrong) in str(error.value)
  assert not (tmp_path / "missing").exists()  # opening to read creates nothing
  with Checkpointer(path) as checkpointer, pytest.raises(InputError, match=r"step 9 \(finished: \[1, 2\]\)"):
    checkpointer.restore(target, step=9)
  os.rename(path / "1" / "data_state" / "process_0-of-1.json", path / "1" / "data_state" / "process_0-of-2.json")
  with Checkpointer(path) as checkpointer, pytest.raises(InputError, match="process count"):
    checkpointer.restore(target, step=1)
  with ocp.CheckpointManager(tmp_path / "other") as manager:  # an orbax checkpoint of something else
    manager.save(1, args=ocp.args.Composite(weights=ocp.args.PyTreeSave({"w": np.ones(2)})))
  with pytest.raises(InputError, match="no 'state' item"):
    load_params(tmp_path / "other", target.params)
  with Checkpointer(tmp_path / "new") as checkpointer, pytest.raises(InputError, match="config"):
    checkpointer.save(1, state, data_state=None, config={"dtype": jnp.float32})
