"""The Grain loader: order, process sharding, exact resume, t_s augmentation, image/video mixing."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from data_fakes import build_toy_shards

from vidjax.data import loader
from vidjax.data import records
from vidjax.errors import ConfigError, InputError
from vidjax.toyworld import save_tokenizer

NUM_EXAMPLES, NUM_FRAMES, SIZE = 24, 4, 16


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """(shard folder of 24 toy clips of 4 x 16 x 16, toy tokenizer folder)."""
  root = tmp_path_factory.mktemp("loader")
  assert build_toy_shards(root / "shards", NUM_EXAMPLES, num_frames=NUM_FRAMES, size=SIZE) == 0
  return str(root / "shards"), save_tokenizer(root / "tokenizer")


def make_config(data, **overrides):
  config = loader.default_loader_config()
  config.data_dir, config.tokenizer_dir = data
  config.batch_size = 2
  config.read_threads = 1
  config.update(overrides)
  return config


def take(config, count, *, state=None, **process):
  it = loader.Loader(config, **({"process_index": 0, "process_count": 1} | process))
  if state is not None:
    it.set_state(json.loads(json.dumps(state)))
  batches = [next(it) for _ in range(count)]
  it.close()
  return batches


def assert_same_batches(expected, got):
  assert len(expected) == len(got)
  for a, b in zip(expected, got):
    assert a.keys() == b.keys()
    for name in a:
      np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def clip_ids(batches) -> list[str]:
  return [hashlib.sha1(clip.tobytes()).hexdigest() for b in batches for clip in b["frames"]]


def test_batch_spec(data):
  batch = take(make_config(data, image_fraction=0.0), 1)[0]
  shapes = {name: (value.shape, value.dtype) for name, value in batch.items()}
  assert shapes == {
      "frames": ((2, NUM_FRAMES, SIZE, SIZE, 3), np.float32),
      "depth": ((2, NUM_FRAMES, SIZE, SIZE, 1), np.float32),
      "structure_fidelity": ((2,), np.int32),
      "tokens": ((2, 16), np.int32),
      "is_image": ((), np.bool_),
  }
  assert -1 <= batch["frames"].min() < batch["frames"].max() <= 1
  assert 0 <= batch["depth"].min() < batch["depth"].max() <= 1  # as stored: the model normalises it
  assert np.all((batch["structure_fidelity"] >= 0) & (batch["structure_fidelity"] <= 7))
  assert np.all(batch["tokens"][:, 0] == 1)  # every caption starts with bos


def test_shards_with_masks_give_object_masks_for_videos_and_images(tmp_path, data):
  assert build_toy_shards(tmp_path / "masked", 4, num_frames=NUM_FRAMES, size=SIZE, extra=("--with_masks",)) == 0
  config = make_config((str(tmp_path / "masked"), data[1]), image_fraction=0.0)
  batch = take(config, 1)[0]
  mask = batch["object_mask"]
  assert mask.shape == (2, NUM_FRAMES, SIZE, SIZE, 1) and mask.dtype == np.float32
  assert set(np.unique(mask)) <= {0.0, 1.0} and 0 < mask.mean() < 1
  image = take(make_config((str(tmp_path / "masked"), data[1]), image_fraction=1.0), 1)[0]
  assert image["object_mask"].shape == (2 * NUM_FRAMES, 1, SIZE, SIZE, 1)
  assert "object_mask" not in take(make_config(data, image_fraction=0.0), 1)[0]


def test_same_seed_same_order_and_other_seed_differs(data):
  first = take(make_config(data, image_fraction=0.3), 6)
  assert_same_batches(first, take(make_config(data, image_fraction=0.3), 6))
  other = take(make_config(data, image_fraction=0.3, seed=1), 6)
  assert clip_ids(first) != clip_ids(other)


def test_processes_see_disjoint_data_covering_an_epoch(data):
  config = make_config(data, image_fraction=0.0, num_epochs=1)
  per_process = NUM_EXAMPLES // 2 // config.batch_size
  ids = [clip_ids(take(config, per_process, process_index=p, process_count=2)) for p in (0, 1)]
  everything = clip_ids(take(make_config(data, image_fraction=0.0, shuffle=False, num_epochs=1),
                             NUM_EXAMPLES // config.batch_size))
  assert not set(ids[0]) & set(ids[1])
  assert sorted(ids[0] + ids[1]) == sorted(everything) and len(set(everything)) == NUM_EXAMPLES
  it = loader.Loader(config, process_index=1, process_count=2)
  for _ in range(per_process):
    next(it)
  with pytest.raises(StopIteration):  # one epoch, and every process has the same batch count
    next(it)


def test_restored_state_replays_the_next_20_batches_exactly(data):
  config = make_config(data, image_fraction=0.3)
  uninterrupted = take(config, 27)
  it = loader.Loader(config, process_index=0, process_count=1)
  for _ in range(7):
    next(it)
  state = it.get_state()
  assert_same_batches(uninterrupted[7:], take(config, 20, state=state))
  assert any(b["is_image"] for b in uninterrupted[7:]) and not all(
      b["is_image"] for b in uninterrupted[7:])


def test_state_from_other_settings_is_refused(data):
  state = loader.Loader(make_config(data), process_index=0, process_count=1).get_state()
  other = loader.Loader(make_config(data, seed=3), process_index=0, process_count=1)
  with pytest.raises(ConfigError, match="other data settings"):
    other.set_state(state)


def test_zero_structure_fidelity_leaves_depth_unchanged_and_larger_blurs(data):
  config = make_config(data, image_fraction=0.0, shuffle=False, structure_fidelity_max=0)
  batch = take(config, 1)[0]
  source = records.ExampleSource(config.data_dir)
  stored = np.stack([source[i]["depth"].astype(np.float32) for i in range(2)])
  np.testing.assert_array_equal(batch["depth"][..., 0], stored)
  assert np.all(batch["structure_fidelity"] == 0)
  blurred = take(make_config(data, image_fraction=0.0, shuffle=False, structure_fidelity_min=3,
                             structure_fidelity_max=3), 1)[0]
  np.testing.assert_array_equal(blurred["frames"], batch["frames"])
  assert np.abs(np.diff(blurred["depth"], axis=3)).mean() < np.abs(
      np.diff(batch["depth"], axis=3)).mean()


def test_image_batch_fraction_and_shapes(data):
  config = make_config(data, batch_size=1, read_threads=2, prefetch_batches=16)
  kinds = [bool(b["is_image"]) for b in take(config, 800)]
  assert abs(np.mean(kinds) - 0.125) < 0.035, np.mean(kinds)
  image = next(b for b in take(make_config(data, image_fraction=1.0), 1))
  assert image["frames"].shape == (2 * NUM_FRAMES, 1, SIZE, SIZE, 3)
  assert image["depth"].shape == (2 * NUM_FRAMES, 1, SIZE, SIZE, 1)
  assert image["tokens"].shape == (8, 16) and image["structure_fidelity"].shape == (8,)
  small = take(make_config(data, image_fraction=1.0, image_batch_size=3), 1)[0]
  assert small["frames"].shape == (3, 1, SIZE, SIZE, 3) and bool(small["is_image"])


def test_image_choice_depends_on_seed_and_step_only():
  choices = [loader.is_image_step(0, step, 0.125) for step in range(64)]
  assert choices == [loader.is_image_step(0, step, 0.125) for step in range(64)]
  assert choices != [loader.is_image_step(1, step, 0.125) for step in range(64)]


def test_two_workers_give_the_same_batches_as_none(data):
  config = make_config(data, image_fraction=0.3)
  assert_same_batches(take(config, 6), take(make_config(data, image_fraction=0.3,
                                                        worker_count=2), 6))


def test_config_errors(data):
  with pytest.raises(ConfigError, match="image_batch_size"):
    loader.Loader(make_config(data, image_batch_size=9), process_index=0, process_count=1)
  with pytest.raises(ConfigError, match="holds no latents"):
    loader.Loader(make_config(data, use_latents=True), process_index=0, process_count=1)
  with pytest.raises(InputError, match="cannot fill a batch"):
    loader.Loader(make_config(data, batch_size=13), process_index=0, process_count=2)
  with pytest.raises(InputError, match="no manifest.json"):
    loader.Loader(make_config((data[0] + "/done", data[1])), process_index=0, process_count=1)


def test_without_a_tokenizer_batches_carry_no_tokens(data):
  """Uncaptioned training (Gen-1's image content): no tokenizer, captions never tokenized."""
  batch = take(make_config((data[0], "")), 1)[0]
  assert "tokens" not in batch
  assert batch["frames"].shape[0] == 2


@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_gen1_stage_data_settings_load_without_a_tokenizer(data, stage):
  """The documented Gen-1 commands set no tokenizer_dir; their loader must start."""
  gen1 = __import__(f"configs.gen1_stage{stage}", fromlist=["get_config"])
  config = gen1.get_config().data
  assert not config.tokenizer_dir
  config.data_dir, config.batch_size, config.read_threads, config.prefetch_batches = data[0], 2, 1, 0
  batch = take(config, 1)[0]
  assert "tokens" not in batch and batch["frames"].ndim == 5
