"""Record encoding, manifest and shard reading with clear errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from vidjax.data import records
from vidjax.errors import InputError

FIELDS = records.clip_fields(3, 5, 7, latent_shape=(3, 2, 2, 4), with_masks=True)


def example(seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {
      "frames": rng.integers(0, 256, (3, 5, 7, 3), dtype=np.uint8),
      "depth": rng.random((3, 5, 7), dtype=np.float32),
      "caption": "a red cube on a striped floor at night",
      "key": f"clips/{seed}",
      "latents": rng.standard_normal((3, 2, 2, 4)).astype(np.float32),
      "masks": rng.integers(0, 3, (3, 5, 7), dtype=np.uint8),
  }


def write_folder(folder, examples: list[dict], *, version: int = records.SCHEMA_VERSION) -> None:
  records.write_shard(os.path.join(folder, "shard-00000-of-00001.array_record"),
                      (records.encode_example(e, FIELDS) for e in examples))
  manifest = records.Manifest(
      fields=FIELDS, shards=(records.ShardInfo("shard-00000-of-00001.array_record",
                                               len(examples)),),
      source="test", depth_method="toy", num_frames=3, stride=1, height=5, width=7,
      created_by="test", schema_version=version)
  records.write_manifest(folder, manifest)


def test_encode_decode_round_trip():
  original = example()
  decoded = records.decode_example(records.encode_example(original, FIELDS), FIELDS, where="t")
  assert set(decoded) == set(FIELDS)
  np.testing.assert_array_equal(decoded["frames"], original["frames"])
  np.testing.assert_array_equal(decoded["masks"], original["masks"])
  np.testing.assert_array_equal(decoded["depth"], original["depth"].astype(np.float16))
  np.testing.assert_array_equal(decoded["latents"], original["latents"].astype(np.float16))
  assert decoded["depth"].dtype == np.float16 and decoded["caption"] == original["caption"]


def test_encode_rejects_wrong_shapes_and_fields():
  bad = example() | {"frames": np.zeros((3, 5, 8, 3), np.uint8)}
  with pytest.raises(ValueError, match="frames"):
    records.encode_example(bad, FIELDS)
  with pytest.raises(ValueError, match="fields"):
    records.encode_example({k: v for k, v in example().items() if k != "masks"}, FIELDS)


def test_decode_rejects_corrupt_and_mismatched_records():
  record = records.encode_example(example(), FIELDS)
  with pytest.raises(InputError, match="shard 2 record 7: corrupt record"):
    records.decode_example(record[:-40], FIELDS, where="shard 2 record 7")
  with pytest.raises(InputError, match="manifest lists"):
    records.decode_example(records.encode_example(example(), FIELDS),
                           records.clip_fields(3, 5, 7), where="r")
  other = records.clip_fields(3, 5, 7, latent_shape=(3, 4, 4, 4), with_masks=True)
  with pytest.raises(InputError, match="latents"):
    records.decode_example(record, other, where="r")


def test_folder_round_trip(tmp_path):
  write_folder(tmp_path, [example(i) for i in range(4)])
  source = records.ExampleSource(tmp_path)
  assert len(source) == 4 and source.manifest.num_examples == 4
  assert source.manifest.fields == FIELDS
  assert [source[i]["key"] for i in range(4)] == [f"clips/{i}" for i in range(4)]
  np.testing.assert_array_equal(source[2]["frames"], example(2)["frames"])
  with open(tmp_path / records.MANIFEST_NAME) as f:
    assert json.load(f)["fields"]["frames"] == {"shape": [3, 5, 7, 3], "dtype": "uint8"}


def test_reader_errors_name_the_problem(tmp_path):
  with pytest.raises(InputError, match="no manifest.json"):
    records.ExampleSource(tmp_path)
  write_folder(tmp_path, [example()], version=records.SCHEMA_VERSION + 1)
  with pytest.raises(InputError, match="schema version 2, this vidjax reads version 1"):
    records.read_manifest(tmp_path)
  write_folder(tmp_path, [example()])
  os.remove(tmp_path / "shard-00000-of-00001.array_record")
  with pytest.raises(InputError, match="missing"):
    records.ExampleSource(tmp_path)
  (tmp_path / records.MANIFEST_NAME).write_text("{not json")
  with pytest.raises(InputError, match="malformed manifest"):
    records.read_manifest(tmp_path)


def test_corrupt_record_in_a_shard_is_reported(tmp_path):
  write_folder(tmp_path, [example()])
  records.write_shard(tmp_path / "shard-00000-of-00001.array_record", [b"\xc1garbage"])
  with pytest.raises(InputError, match="record 0: corrupt record"):
    records.ExampleSource(tmp_path)[0]


def test_interrupted_shard_write_leaves_nothing(tmp_path):
  def interrupted():
    yield records.encode_example(example(), FIELDS)
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    records.write_shard(tmp_path / "shard.array_record", interrupted())
  assert os.listdir(tmp_path) == []
