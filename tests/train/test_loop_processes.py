"""The training loop as separate processes: killed and resumed runs, and two processes on one machine.

Apart from tests/train/test_loop.py (the in-process runs) so the two files, the suite's longest,
run on both pytest workers at once.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np

from vidjax.convert import common
from vidjax.train.checkpoint import load_params

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 10


def _command(workdir, data, *extra):
  overrides = {**data, "train.num_steps": STEPS, "log.data_trace": True}
  return [sys.executable, "-m", "vidjax.cli", "train", "--config", os.path.join(ROOT, "tests/train/tiny_config.py"),
          "--workdir", str(workdir), *[f"--config.{k}={v}" for k, v in overrides.items()], *extra]


def _trace(workdir) -> dict[int, str]:
  """step -> batch fingerprint; a resumed run re-appends the steps it redid (the last entry wins)."""
  with open(os.path.join(workdir, "data_trace.process0.jsonl")) as f:
    return {row["step"]: row["sha256"] for row in map(json.loads, f)}


def _kill_when(process, ready, timeout=300.0) -> bool:
  """SIGKILLs `process` once `ready()` holds; False if it finished first."""
  deadline = time.monotonic() + timeout
  while process.poll() is None and time.monotonic() < deadline:
    if ready():
      process.send_signal(signal.SIGKILL)
      process.wait()
      return True
    time.sleep(0.02)
  process.wait()
  return False


def _unfinished_save(checkpoints) -> bool:
  """A step directory exists whose commit marker is not written yet: a save is in progress."""
  if not os.path.isdir(checkpoints):
    return False
  return any(name.isdigit() and not os.path.exists(os.path.join(checkpoints, name, "commit_success.txt"))
             for name in os.listdir(checkpoints))

def test_killed_runs_resume_to_the_bitwise_same_params_on_the_same_data(tmp_path, data):
  reference, resumed = tmp_path / "reference", tmp_path / "resumed"
  assert subprocess.run(_command(reference, data), capture_output=True).returncode == 0
  rng = random.Random(0)
  traced_steps = lambda: os.path.exists(resumed / "data_trace.process0.jsonl") and len(_trace(resumed))
  kills = [
      lambda: _unfinished_save(resumed / "checkpoints"),  # in the middle of writing a checkpoint
      lambda: (traced_steps() or 0) >= 5 and rng.random() < 0.05,  # mid-training
      lambda t0=time.monotonic(), wait=rng.uniform(1, 8): time.monotonic() - t0 > wait,  # anywhere, even start-up
  ]
  killed = 0
  for ready in kills:
    process = subprocess.Popen(_command(resumed, data), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed += _kill_when(process, ready)
  assert killed >= 2, "the runs finished before they could be killed"
  assert subprocess.run(_command(resumed, data), capture_output=True).returncode == 0

  assert _trace(resumed) == _trace(reference) and len(_trace(reference)) == STEPS
  final_ref = common.flatten(load_params(reference / "checkpoints"))
  final_resumed = common.flatten(load_params(resumed / "checkpoints"))
  assert final_ref.keys() == final_resumed.keys()
  assert all(np.array_equal(final_ref[p], final_resumed[p]) for p in final_ref)

def test_two_processes_on_localhost_train_and_agree_on_the_loss(tmp_path, data):
  command = [sys.executable, "-m", "launch.local", "--num_processes", "2", "--",
             *_command(tmp_path, data, "--config.train.num_steps=2", "--config.data.batch_size=4")[3:]]
  result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
  finals = [line.rsplit("->", 1)[1] for line in result.stdout.splitlines() if "smoothed loss" in line and "->" in line]
  assert len(finals) == 2 and finals[0] == finals[1], result.stdout[-2000:]
