"""Example schema, record encoding and `manifest.json` for ArrayRecord clip shards.

A shard folder holds `shard-00000-of-00004.array_record` files and a `manifest.json`:

  {"schema_version": 1,
   "fields": {"frames": {"shape": [8, 64, 64, 3], "dtype": "uint8"},
              "depth": {"shape": [8, 64, 64], "dtype": "float16"},
              "caption": {"shape": [], "dtype": "str"}, "key": {"shape": [], "dtype": "str"}},
   "shards": [{"path": "shard-00000-of-00002.array_record", "num_examples": 16}, ...],
   "num_examples": 32, "source": "toy world, seed 0", "depth_method": "toy",
   "num_frames": 8, "stride": 4, "height": 64, "width": 64,
   "created_by": "vidjax 0.1.0 vidjax.data.shards", "fingerprint": "<sha256>"}

Fields of an example (T frames of H x W):
  frames   uint8 (T, H, W, 3)
  depth    float16 (T, H, W), inverse depth normalised to [0, 1] per clip (1 = near)
  caption  str
  key      str, the source's id of the clip
  latents  float16 (T, h, w, 4), optional: cached VAE latents of `frames`
  clip_embeddings  float16 (T, D), optional: cached CLIP image embeddings of `frames`, one per frame
  masks    uint8 (T, H, W), optional: 0 = background, k = the k-th object of the caption
  start_frame  int32 (), optional: the video frame the clip starts at (clip policies other than
           one clip from the start, `vidjax.data.clips`)

Each record is one msgpack map (no pickle): strings as strings, arrays as {"dtype", "shape",
"data"} with the raw bytes; readers check every record against the manifest's fields.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Mapping

import msgpack
import numpy as np

from vidjax.errors import InputError, atomic_path, write_json

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SKIPPED_NAME = "skipped.jsonl"
CLIP_EMBEDDINGS = "clip_embeddings"
STRING = "str"
# One record per chunk, so reading record i decodes only record i (random access for shuffling).
WRITER_OPTIONS = "group_size:1"


@dataclasses.dataclass(frozen=True)
class FieldSpec:
  """Shape and dtype of one example field; dtype is a numpy dtype name or "str"."""

  shape: tuple[int, ...]
  dtype: str

  def to_json(self) -> dict[str, Any]:
    return {"shape": list(self.shape), "dtype": self.dtype}


def clip_fields(num_frames: int, height: int, width: int, *,
                latent_shape: tuple[int, ...] | None = None,
                with_masks: bool = False, with_start_frame: bool = False) -> dict[str, FieldSpec]:
  """The schema of a clip example: frames, depth, caption, key, and the optional fields."""
  fields = {
      "frames": FieldSpec((num_frames, height, width, 3), "uint8"),
      "depth": FieldSpec((num_frames, height, width), "float16"),
      "caption": FieldSpec((), STRING),
      "key": FieldSpec((), STRING),
  }
  if latent_shape is not None:
    fields["latents"] = FieldSpec(tuple(latent_shape), "float16")
  if with_masks:
    fields["masks"] = FieldSpec((num_frames, height, width), "uint8")
  if with_start_frame:
    fields["start_frame"] = FieldSpec((), "int32")
  return fields


def encode_example(example: Mapping[str, Any], fields: Mapping[str, FieldSpec]) -> bytes:
  """Serialises an example (arrays cast to the field dtypes) into one msgpack record."""
  if set(example) != set(fields):
    raise ValueError(f"example fields {sorted(example)} differ from the schema's {sorted(fields)}")
  packed = {}
  for name, spec in fields.items():
    if spec.dtype == STRING:
      packed[name] = str(example[name])
      continue
    array = np.asarray(example[name], dtype=spec.dtype)
    array = np.ascontiguousarray(array) if array.ndim else array  # ascontiguousarray makes a scalar 1-D
    if array.shape != spec.shape:
      raise ValueError(f"field {name!r} has shape {array.shape}, the schema says {spec.shape}")
    packed[name] = {"dtype": spec.dtype, "shape": list(array.shape), "data": array.tobytes()}
  return msgpack.packb(packed, use_bin_type=True)


def decode_example(record: bytes, fields: Mapping[str, FieldSpec], *,
                   where: str) -> dict[str, Any]:
  """Parses and validates one record; `where` names it in errors (e.g. 'shard 3 record 17').

  Returns:
    dict of read-only numpy arrays (field shapes and dtypes) and Python strings.
  """
  fix = "rebuild the shards with data_pipelines/build_shards.py"
  try:
    packed = msgpack.unpackb(record, raw=False)
  except (ValueError, msgpack.UnpackException) as e:
    raise InputError(where, f"corrupt record ({e})", fix) from e
  if not isinstance(packed, dict) or set(packed) != set(fields):
    found = sorted(packed) if isinstance(packed, dict) else type(packed).__name__
    raise InputError(where, f"record holds {found}, the manifest lists {sorted(fields)}", fix)
  return {name: _decode_field(packed[name], name, spec, where, fix)
          for name, spec in fields.items()}


def _decode_field(value: Any, name: str, spec: FieldSpec, where: str, fix: str):
  if spec.dtype == STRING:
    if not isinstance(value, str):
      raise InputError(where, f"field {name!r} is not a string", fix)
    return value
  if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data"}:
    raise InputError(where, f"field {name!r} is not an encoded array", fix)
  if value["dtype"] != spec.dtype or tuple(value["shape"]) != spec.shape:
    raise InputError(where, f"field {name!r} is {value['dtype']}{tuple(value['shape'])}, the "
                     f"manifest says {spec.dtype}{spec.shape}", fix)
  expected = int(np.prod(spec.shape)) * np.dtype(spec.dtype).itemsize
  if len(value["data"]) != expected:
    raise InputError(where, f"field {name!r} holds {len(value['data'])} bytes, expected "
                     f"{expected}", fix)
  return np.frombuffer(value["data"], dtype=spec.dtype).reshape(spec.shape)


def shard_name(index: int, count: int) -> str:
  return f"shard-{index:05d}-of-{count:05d}.array_record"


def write_shard(path: str | os.PathLike, records: Iterable[bytes]) -> int:
  """Writes records to an ArrayRecord file atomically (temporary name, then rename).

  Returns:
    the number of records written.
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  count = 0
  with atomic_path(path) as tmp:
    writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
    try:
      for record in records:
        writer.write(record)
        count += 1
    finally:
      writer.close()
  return count


@dataclasses.dataclass(frozen=True)
class ShardInfo:
  path: str  # relative to the manifest's folder
  num_examples: int


@dataclasses.dataclass(frozen=True)
class Manifest:
  """What a shard folder holds; see the module docstring for the JSON form."""

  fields: dict[str, FieldSpec]
  shards: tuple[ShardInfo, ...]
  source: str
  depth_method: str
  num_frames: int
  stride: int
  height: int
  width: int
  created_by: str
  schema_version: int = SCHEMA_VERSION
  fingerprint: str = ""  # of the items, settings and code that built the shards (vidjax.data.shards)

  @property
  def num_examples(self) -> int:
    return sum(shard.num_examples for shard in self.shards)

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["fields"] = {name: spec.to_json() for name, spec in self.fields.items()}
    out["shards"] = [dataclasses.asdict(shard) for shard in self.shards]
    out["num_examples"] = self.num_examples
    return out


def write_manifest(folder: str | os.PathLike, manifest: Manifest) -> str:
  """Writes `<folder>/manifest.json` atomically; returns its path."""
  path = os.path.join(folder, MANIFEST_NAME)
  write_json(path, manifest.to_json())
  return path


def read_manifest(folder: str | os.PathLike) -> Manifest:
  """Reads and checks `<folder>/manifest.json`.

  Raises:
    InputError: the manifest is missing or unreadable, has another schema version, or its shard
      list does not add up.
  """
  path = os.path.join(folder, MANIFEST_NAME)
  fix = "point at a folder written by data_pipelines/build_shards.py (or rebuild it)"
  if not os.path.isfile(path):
    raise InputError(path, "no manifest.json: not a finished shard folder", fix)
  try:
    with open(path) as f:
      raw = json.load(f)
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
      raise InputError(path, f"schema version {version}, this vidjax reads version "
                       f"{SCHEMA_VERSION}", "rebuild the shards with this vidjax version")
    manifest = Manifest(
        fields={name: FieldSpec(tuple(spec["shape"]), spec["dtype"])
                for name, spec in raw["fields"].items()},
        shards=tuple(ShardInfo(s["path"], int(s["num_examples"])) for s in raw["shards"]),
        **{k: raw[k] for k in ("source", "depth_method", "num_frames", "stride", "height",
                               "width", "created_by")}, fingerprint=raw.get("fingerprint", ""))
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise InputError(path, f"malformed manifest ({type(e).__name__}: {e})", fix) from e
  if manifest.num_examples != raw.get("num_examples"):
    raise InputError(path, f"shards hold {manifest.num_examples} examples but num_examples is "
                     f"{raw.get('num_examples')}", fix)
  return manifest


def shard_paths(folder: str | os.PathLike, manifest: Manifest) -> list[str]:
  """Absolute paths of the manifest's shards; raises InputError if one is missing."""
  paths = [os.path.join(os.path.abspath(folder), shard.path) for shard in manifest.shards]
  for path in paths:
    if not os.path.isfile(path):
      raise InputError(path, "shard listed in manifest.json is missing",
                       "copy the whole shard folder, or rebuild it")
  return paths


class ExampleSource:
  """Random access to the validated examples of a shard folder (a Grain data source).

  `source[i]` is a dict as described in the module docstring; `len(source)` the example count.
  """

  def __init__(self, folder: str | os.PathLike):
    import grain  # pylint: disable=g-import-not-at-top
    self.folder = os.fspath(folder)
    self.manifest = read_manifest(folder)
    self._records = grain.sources.ArrayRecordDataSource(shard_paths(folder, self.manifest))
    if len(self._records) != self.manifest.num_examples:
      raise InputError(self.folder, f"shards hold {len(self._records)} records, manifest.json "
                       f"says {self.manifest.num_examples}", "rebuild the shard folder")

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return decode_example(self._records[index], self.manifest.fields,
                          where=f"{self.folder} record {index}")
