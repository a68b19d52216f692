"""Image batches at aspect-ratio buckets (`data.image_buckets`): shapes, the (seed, step) draw, resume,
depth and masks on the frames' geometry, video batches untouched, bad buckets refused."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from data_fakes import build_toy_shards

from vidjax.data import loader, video_io
from vidjax.errors import ConfigError

NUM_FRAMES, SIZE = 4, 16
# Square, landscape, portrait; downscaled, upscaled and non-integer scales of the 16x16 toy frames.
BUCKETS = ((16, 16), (8, 24), (24, 8), (12, 20))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  """A folder of 8 toy clips of 4 x 16 x 16 with object masks."""
  folder = tmp_path_factory.mktemp("buckets") / "shards"
  assert build_toy_shards(folder, 8, num_frames=NUM_FRAMES, size=SIZE, extra=("--with_masks",)) == 0
  return str(folder)


def make_config(shards, **overrides):
  config = loader.default_loader_config()
  config.data_dir = shards
  config.batch_size, config.read_threads, config.prefetch_batches = 2, 1, 0
  config.update(overrides)
  return config


def take(config, count, state=None):
  it = loader.Loader(config, process_index=0, process_count=1)
  if state is not None:
    it.set_state(json.loads(json.dumps(state)))
  batches = [next(it) for _ in range(count)]
  it.close()
  return batches


def as_uint8(frames):
  return np.round((frames + 1.0) * 127.5).astype(np.uint8)


def test_image_batches_take_the_drawn_bucket_and_every_bucket_is_used(shards):
  batches = take(make_config(shards, image_fraction=1.0, image_buckets=BUCKETS), 24)
  for step, batch in enumerate(batches):
    height, width = loader.image_bucket(0, step, BUCKETS)
    n = 2 * NUM_FRAMES
    assert batch["frames"].shape == (n, 1, height, width, 3)
    assert batch["depth"].shape == batch["object_mask"].shape == (n, 1, height, width, 1)
    assert -1 <= batch["frames"].min() and batch["frames"].max() <= 1
    assert 0 <= batch["depth"].min() and batch["depth"].max() <= 1
    assert set(np.unique(batch["object_mask"])) <= {0.0, 1.0}
  assert {b["frames"].shape[2:4] for b in batches} == set(BUCKETS)


def test_bucketed_images_are_the_same_frames_resized_and_video_batches_are_unchanged(shards):
  """Buckets change no draw: the same frames and t_s, each scaled to cover the bucket and centre-cropped."""
  settings = dict(image_fraction=0.5, structure_fidelity_max=0)  # t_s = 0: depth as stored, no blur
  plain = take(make_config(shards, **settings), 16)
  bucketed = take(make_config(shards, image_buckets=BUCKETS, **settings), 16)
  kinds = [bool(b["is_image"]) for b in plain]
  assert any(kinds) and not all(kinds)
  for step, (a, b) in enumerate(zip(plain, bucketed)):
    assert a.keys() == b.keys() and bool(a["is_image"]) == bool(b["is_image"])
    if not a["is_image"]:
      for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
      continue
    height, width = loader.image_bucket(0, step, BUCKETS)
    np.testing.assert_array_equal(b["structure_fidelity"], a["structure_fidelity"])
    expected = video_io.resize_center_crop(as_uint8(a["frames"][:, 0]), height, width)
    np.testing.assert_array_equal(as_uint8(b["frames"][:, 0]), expected)
    depth = video_io.resize_center_crop_maps(a["depth"][:, 0, ..., 0], height, width)
    np.testing.assert_allclose(b["depth"][:, 0, ..., 0], np.clip(depth, 0, 1), atol=1e-6)


def test_masks_cover_the_object_pixels_of_the_resized_frames():
  """A white square on black, its mask and its depth: after each bucket's resize the three agree."""
  frames = np.zeros((2, 1, 16, 16, 3), np.uint8)
  masks = np.zeros((2, 1, 16, 16), np.uint8)
  frames[0, :, 3:9, 5:13], masks[0, :, 3:9, 5:13] = 255, 2  # object 2: any label > 0 is an object
  frames[1, :, 10:15, 1:6], masks[1, :, 10:15, 1:6] = 255, 1
  clips = {"frames": frames, "depth": (masks > 0).astype(np.float16), "masks": masks}
  # And sizes whose centre crop starts between pixels (a half-pixel slip would show).
  for bucket in BUCKETS + ((40, 24), (6, 10), (14, 21), (21, 14), (5, 9)):
    out = loader._resize_to_bucket(clips, bucket)
    brightness = out["frames"][:, 0, ..., 0].astype(np.float32)
    mask = out["masks"][:, 0].astype(bool)
    assert out["frames"].shape == (2, 1) + bucket + (3,) and mask.shape == (2,) + bucket
    assert mask.any(axis=(1, 2)).all() and not mask.all()
    clear = np.abs(brightness - 127.5) > 16  # away from the one-pixel ramp at each edge
    np.testing.assert_array_equal(mask[clear], brightness[clear] > 127.5, err_msg=str(bucket))
    np.testing.assert_array_equal(out["depth"][:, 0][clear] > 0.5, mask[clear], err_msg=str(bucket))
    assert clear.mean() > 0.75


def test_stored_masks_follow_the_frames_through_the_loader(shards):
  """Each bucketed object mask is the unbucketed mask resized as a picture by the frames' own resize."""
  plain = take(make_config(shards, image_fraction=1.0), 6)
  bucketed = take(make_config(shards, image_fraction=1.0, image_buckets=BUCKETS), 6)
  for step, (a, b) in enumerate(zip(plain, bucketed)):
    height, width = loader.image_bucket(0, step, BUCKETS)
    picture = np.repeat((a["object_mask"][:, 0] * 255).astype(np.uint8), 3, axis=-1)
    resized = video_io.resize_center_crop(picture, height, width)[..., 0].astype(np.float32)
    got = b["object_mask"][:, 0, ..., 0].astype(bool)
    clear = np.abs(resized - 127.5) > 16
    np.testing.assert_array_equal(got[clear], resized[clear] > 127.5)
    assert 0 < got.mean() < 1


def test_bucket_choice_depends_on_seed_and_step_only_and_not_on_the_image_draw():
  draws = [loader.image_bucket(0, step, BUCKETS) for step in range(400)]
  assert draws == [loader.image_bucket(0, step, BUCKETS) for step in range(400)]
  assert draws != [loader.image_bucket(1, step, BUCKETS) for step in range(400)]
  # The image steps (12.5%) see every bucket about equally: the bucket is not tied to the image draw.
  image_steps = [step for step in range(2000) if loader.is_image_step(0, step, 0.125)]
  counts = np.bincount([BUCKETS.index(loader.image_bucket(0, s, BUCKETS)) for s in image_steps],
                       minlength=len(BUCKETS))
  assert counts.min() > 0.6 * len(image_steps) / len(BUCKETS), counts
  assert loader.image_bucket(0, 3, ()) is None


def test_a_restored_loader_replays_the_buckets(shards):
  config = make_config(shards, image_fraction=0.5, image_buckets=BUCKETS)
  uninterrupted = take(config, 14)
  it = loader.Loader(config, process_index=0, process_count=1)
  for _ in range(5):
    next(it)
  resumed = take(config, 9, state=it.get_state())
  it.close()
  for a, b in zip(uninterrupted[5:], resumed):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name], err_msg=name)
  assert len({b["frames"].shape for b in resumed}) >= 3


def test_the_fingerprint_names_buckets_only_when_set(shards):
  """States saved before buckets existed still restore; a state from other buckets is refused."""
  config = make_config(shards)
  keys = ("batch_size", "image_fraction", "image_batch_size", "seed", "shuffle", "num_epochs",
          "structure_fidelity_min", "structure_fidelity_max", "use_latents")
  before = {k: config[k] for k in keys} | {"process": [0, 1]}
  assert loader._fingerprint(config, 0, 1) == hashlib.sha256(
      json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
  state = loader.Loader(make_config(shards, image_buckets=BUCKETS), process_index=0, process_count=1).get_state()
  for other in ((), BUCKETS[:2]):
    with pytest.raises(ConfigError, match="other data settings"):
      loader.Loader(make_config(shards, image_buckets=other), process_index=0, process_count=1).set_state(state)


@pytest.mark.parametrize("buckets, message", [
    (((320, 330),), r"320x330 \(height x width\) has a side that is not a multiple of the model's size "
                    r"multiple 64.*e.g. \(320, 320\)"),
    (((320,),), r"\(320,\) is not a \(height, width\) pair"),
    (((0, 64),), r"\(0, 64\) is not a \(height, width\) pair of positive integers"),
    (((64.0, 64),), r"\(64.0, 64\) is not a \(height, width\) pair"),
    ("320x320", "'320x320' is not a tuple of"),
])
def test_bad_buckets_are_refused_naming_the_field_and_the_fix(buckets, message):
  with pytest.raises(ConfigError, match=r"data.image_buckets: " + message) as error:
    loader.check_image_buckets(buckets, 64)
  assert "Fix: " in str(error.value)


def test_the_loader_refuses_malformed_buckets_and_buckets_over_cached_latents(shards):
  with pytest.raises(ConfigError, match="data.image_buckets"):
    loader.Loader(make_config(shards, image_buckets=((16, -8),)), process_index=0, process_count=1)
  with pytest.raises(ConfigError, match="use_latents reads latents cached at the stored size"):
    loader.Loader(make_config(shards, image_buckets=BUCKETS, use_latents=True), process_index=0, process_count=1)


@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_gen1_trains_images_at_its_buckets_and_they_fit_its_model(stage):
  from vidjax.models import build  # pylint: disable=g-import-not-at-top
  gen1 = __import__(f"configs.gen1_stage{stage}", fromlist=["get_config"]).get_config()
  buckets = set(gen1.data.image_buckets)
  assert buckets == {(320, 320), (320, 384), (384, 320), (256, 448), (448, 256)}  # Sec. 3.4, with flips
  multiple = build.size_multiple(gen1)
  assert multiple == build.build_model(gen1).config.size_multiple == 64
  assert set(loader.check_image_buckets(gen1.data.image_buckets, multiple)) == buckets
