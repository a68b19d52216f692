"""The evaluation job's core: a SIGKILLed run resumes without recomputing cached items; process slices add up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from vidjax.errors import InputError
from vidjax.eval import job, metrics

KEYS = [f"item-{i:03d}" for i in range(12)]
METRICS = (metrics.FVD(feature="f"), metrics.FrameConsistency(feature="frames"))

# A job whose compute logs each item it computes and, when asked, SIGKILLs itself while computing one.
_CHILD = textwrap.dedent("""
  import os, signal, sys
  import numpy as np
  from vidjax.eval import job
  workdir, kill_at = sys.argv[1], sys.argv[2]

  def compute(key):
    with open(os.path.join(workdir, "computed.log"), "a") as log:
      log.write(key + "\\n")
    if key == kill_at:
      os.kill(os.getpid(), signal.SIGKILL)
    rng = np.random.default_rng(int(key.split("-")[1]))
    return {"f": rng.normal(size=3), "frames": rng.normal(size=(4, 5))}

  keys = [f"item-{i:03d}" for i in range(12)]
  job.cached_features(job.FeatureCache(os.path.join(workdir, "features")), keys, compute)
""")


def _fake_features(key: str) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(int(key.split("-")[1]))
  return {"f": rng.normal(size=3), "frames": rng.normal(size=(4, 5))}


def _score(features: dict, keys) -> list[metrics.Figure]:
  """The figures of METRICS on the stacked items (FVD against a fixed shifted reference set)."""
  stacked = job.stack(features, keys)
  reference = {"f": np.random.default_rng(99).normal(size=(12, 3)) + 0.5}
  return [m(stacked, reference) if m.reference_needs else m(stacked) for m in METRICS]


def _run_child(workdir, kill_at: str) -> int:
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
  return subprocess.run([sys.executable, "-c", _CHILD, str(workdir), kill_at], env=env, timeout=120).returncode


def test_sigkilled_job_resumes_without_recomputing_and_gives_the_same_figures(tmp_path):
  assert _run_child(tmp_path, kill_at="item-007") == -signal.SIGKILL
  log = tmp_path / "computed.log"
  assert log.read_text().split() == KEYS[:8]  # killed while computing item 7
  assert sorted(os.listdir(tmp_path / "features")) == [k + ".npz" for k in KEYS[:7]]  # no partial file
  assert _run_child(tmp_path, kill_at="none") == 0
  assert log.read_text().split() == KEYS[:8] + KEYS[7:]  # the restart computed only the missing 5
  features, computed = job.cached_features(job.FeatureCache(tmp_path / "features"), KEYS,
                                           lambda key: pytest.fail(f"{key} recomputed"))
  assert computed == 0
  clean, computed = job.cached_features(job.FeatureCache(tmp_path / "clean"), KEYS, _fake_features)
  assert computed == len(KEYS)
  assert _score(features, KEYS) == _score(clean, KEYS)


def test_two_processes_give_the_figures_of_one(tmp_path):
  slices = [job.process_slice(KEYS, p, 2) for p in range(2)]
  assert sorted(slices[0] + slices[1]) == KEYS and not set(slices[0]) & set(slices[1])
  shared = job.FeatureCache(tmp_path / "shared")
  for keys in slices:  # each process fills its slice of the shared cache
    assert job.cached_features(shared, keys, _fake_features)[1] == len(keys)
  gathered, computed = job.cached_features(shared, KEYS, _fake_features)
  one, _ = job.cached_features(job.FeatureCache(tmp_path / "one"), KEYS, _fake_features)
  assert computed == 0 and _score(gathered, KEYS) == _score(one, KEYS)
  with pytest.raises(InputError, match="outside 0..1"):
    job.process_slice(KEYS, 2, 2)


def test_unreadable_cache_files_are_recomputed_and_bad_keys_refused(tmp_path):
  cache = job.FeatureCache(tmp_path)
  job.cached_features(cache, KEYS[:2], _fake_features)
  (tmp_path / "item-001.npz").write_bytes(b"not a zip")
  with pytest.warns(UserWarning, match="item-001.npz: unreadable"):
    features, computed = job.cached_features(cache, KEYS[:2], _fake_features)
  assert computed == 1
  np.testing.assert_array_equal(features["item-001"]["f"], _fake_features("item-001")["f"])
  with pytest.raises(InputError, match="not a safe file name"):
    cache.path("../escape")
  with pytest.raises(InputError, match="not unique"):
    job.cached_features(cache, ["item-000", "item-000"], _fake_features)


def test_results_json_is_written_atomically(tmp_path):
  features, _ = job.cached_features(job.FeatureCache(tmp_path / "features"), KEYS, _fake_features)
  figures = _score(features, KEYS)
  out = tmp_path / "results.json"
  written = job.write_results(out, figures, checkpoint="toy", extra={"items": len(KEYS)})
  assert json.loads(out.read_text()) == written
  assert [f["metric"] for f in written["figures"]] == ["fvd", "clip_frame_consistency"]
  assert written["figures"][1]["count"] == 12 and written["code_version"]
  bad = [metrics.Figure("fvd", float("nan"), 1, "p")]
  with pytest.raises(ValueError):
    job.write_results(tmp_path / "bad.json", bad, checkpoint="toy")
  assert sorted(os.listdir(tmp_path)) == ["features", "results.json"]  # nothing half-written
