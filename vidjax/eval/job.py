"""The resumable core of an evaluation job: per-item feature cache, per-process item slices, results JSON.

On-disk layout under the job's workdir:

  features/<KEY>.npz     one item's features ({name: array}, `vidjax.eval.features`), written atomically,
                         so a file that exists is whole; a killed job restarted on the same workdir loads
                         these and computes only the missing items
  results.json           the figures, written atomically once every item is scored

Data parallel: process p of P computes the items `process_slice(keys, p, P)` (every P-th item, so a
slow stretch of items is spread over the processes) into the shared `features/` folder; once all are
done (the caller's barrier), any process stacks every item's cached features in key order and scores
them, so P processes give the figures one process gives.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
import zipfile
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

import vidjax
from vidjax.errors import InputError, atomic_path
from vidjax.eval.metrics import FeatureSet, Figure

Features = dict[str, np.ndarray]
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class FeatureCache:
  """One .npz of features per item key in `folder` (created on first write)."""

  def __init__(self, folder: str | os.PathLike):
    self.folder = os.fspath(folder)

  def path(self, key: str) -> str:
    if not _KEY.match(key):
      raise InputError(f"item key {key!r}", "is not a safe file name",
                       "use letters, digits, '.', '_' and '-' (at most 200, not starting with a dot)")
    return os.path.join(self.folder, key + ".npz")

  def load(self, key: str) -> Features | None:
    """The item's cached features, or None when absent or unreadable (then it is recomputed)."""
    path = self.path(key)
    if not os.path.exists(path):
      return None
    try:
      with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
      warnings.warn(f"{path}: unreadable cached features ({e}); recomputing the item", stacklevel=2)
      return None

  def save(self, key: str, features: Mapping[str, np.ndarray]) -> None:
    with atomic_path(self.path(key)) as tmp:
      np.savez(tmp, **{name: np.asarray(v) for name, v in features.items()})


def process_slice(keys: Sequence[str], process_index: int, process_count: int) -> list[str]:
  """The keys process `process_index` of `process_count` computes: every process_count-th, from its index."""
  if not 0 <= process_index < process_count:
    raise InputError("process_index", f"{process_index} is outside 0..{process_count - 1}",
                     "pass jax.process_index() and jax.process_count()")
  return list(keys[process_index::process_count])


def cached_features(cache: FeatureCache, keys: Iterable[str], compute: Callable[[str], Mapping[str, np.ndarray]],
                    *, progress: Callable[[int, int, float], None] | None = None) -> tuple[dict[str, Features], int]:
  """Every key's features, loaded from `cache` or computed by `compute(key)` and saved at once.

  Returns ({key: features}, how many were computed). Each item is saved as soon as it is computed, so
  a job killed at any moment loses at most the item in progress. `progress(done, total, items_per_s)`
  is called after each item (e.g. to move a tqdm bar).
  """
  keys = list(keys)
  if len(set(keys)) != len(keys):
    raise InputError("item keys", "are not unique", "give every item its own key")
  out, computed, start = {}, 0, time.perf_counter()
  for done, key in enumerate(keys, 1):
    features = cache.load(key)
    if features is None:
      features = {name: np.asarray(v) for name, v in compute(key).items()}
      cache.save(key, features)
      computed += 1
    out[key] = features
    if progress is not None:
      progress(done, len(keys), done / max(time.perf_counter() - start, 1e-9))
  return out, computed


def stack(features: Mapping[str, Features], keys: Sequence[str], names: Iterable[str] | None = None) -> FeatureSet:
  """{name: (N, ...) array} of the items `keys`, in that order (all names the first item has, or `names`)."""
  if not keys:
    raise InputError("items", "none to score", "give the job at least one item")
  names = list(features[keys[0]]) if names is None else list(names)
  missing = [(k, n) for k in keys for n in names if n not in features[k]]
  if missing:
    raise InputError(f"item {missing[0][0]!r}", f"has no feature {missing[0][1]!r}",
                     "delete its cached file under features/ so that it is recomputed")
  return {n: np.stack([features[k][n] for k in keys]) for n in names}


def write_results(path: str | os.PathLike, figures: Sequence[Figure], *, checkpoint: str,
                  extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Writes the results JSON atomically and returns what it wrote.

  {"figures": [{"metric", "value", "count", "protocol"}, ...], "checkpoint": ..., "code_version": ...,
  **extra}; `code_version` is the vidjax package version.
  """
  results = {"figures": [dict(metric=f.metric, value=f.value, count=f.count, protocol=f.protocol) for f in figures],
             "checkpoint": checkpoint, "code_version": vidjax.__version__, **(extra or {})}
  text = json.dumps(results, indent=2, allow_nan=False)  # before opening: a bad value writes nothing
  with atomic_path(path) as tmp:
    with open(tmp, "w") as f:
      f.write(text + "\n")
  return results
