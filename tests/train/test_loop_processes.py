"""The training loop as separate processes: killed and resumed runs, and two processes on one machine.

Apart from tests/train/test_loop.py (the in-process runs) so the two files, the suite's longest,
run on both pytest workers at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from vidjax.convert import common
from vidjax.train.checkpoint import load_params

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 6  # saves at 2, 4 and 6: a kill while saving 4 or 6 leaves an earlier finished one


def _command(workdir, loop_base, *extra):
  overrides = {**loop_base, "train.num_steps": STEPS, "log.data_trace": True}
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


def _saves(checkpoints) -> tuple[list[int], list[int]]:
  """(finished, unfinished) steps on disk: a step directory is finished once its commit marker is written."""
  if not os.path.isdir(checkpoints):
    return [], []
  steps = [name for name in os.listdir(checkpoints) if name.isdigit()]
  done = {name: os.path.exists(os.path.join(checkpoints, name, "commit_success.txt")) for name in steps}
  return sorted(int(n) for n in steps if done[n]), sorted(int(n) for n in steps if not done[n])


def test_a_run_killed_while_saving_resumes_to_the_bitwise_same_params_on_the_same_data(tmp_path, loop_base):
  # Killed while it writes a checkpoint after an earlier one finished: the resume must skip the
  # unfinished step (restoring it would fail or skip ahead), restore the finished one from the middle
  # of the run (params, optimizer, RNG, data position), and redo the steps since on the same batches.
  # A kill between saves leaves the same on disk minus the unfinished step, so this kill covers it.
  reference, resumed = tmp_path / "reference", tmp_path / "resumed"
  assert subprocess.run(_command(reference, loop_base), capture_output=True).returncode == 0
  process = subprocess.Popen(_command(resumed, loop_base), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  mid_save = lambda: all(_saves(resumed / "checkpoints"))
  assert _kill_when(process, mid_save), "the run finished before it could be killed while saving"
  finished, _ = _saves(resumed / "checkpoints")
  assert max(_trace(resumed)) >= max(finished)  # it had done steps after that checkpoint: the resume redoes them
  result = subprocess.run(_command(resumed, loop_base), capture_output=True, text=True)
  assert result.returncode == 0 and f"resumed from step {max(finished)} in" in result.stdout, result.stderr[-4000:]

  assert _trace(resumed) == _trace(reference) and len(_trace(reference)) == STEPS
  final_ref = common.flatten(load_params(reference / "checkpoints"))
  final_resumed = common.flatten(load_params(resumed / "checkpoints"))
  assert final_ref.keys() == final_resumed.keys()
  assert all(np.array_equal(final_ref[p], final_resumed[p]) for p in final_ref)


def test_two_processes_on_localhost_train_and_agree_on_the_loss(tmp_path, loop_base):
  command = [sys.executable, "-m", "launch.local", "--num_processes", "2", "--",
             *_command(tmp_path, loop_base, "--config.train.num_steps=2", "--config.data.batch_size=4")[3:]]
  result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
  finals = [line.rsplit("->", 1)[1] for line in result.stdout.splitlines() if "smoothed loss" in line and "->" in line]
  assert len(finals) == 2 and finals[0] == finals[1], result.stdout[-2000:]
