"""User-facing errors and atomic output helpers.

Every error a user can cause names the input, the problem and the fix; the CLI turns a
`VidjaxError` into a one-line message and a non-zero exit without a traceback. Outputs are written
to a temporary sibling path and renamed, so an interrupted job never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import shutil
import tempfile
from typing import Any, Iterator

# Exit codes of the CLI (documented in the README).
EXIT_OK = 0
EXIT_ERROR = 2  # bad input or configuration: nothing was written
EXIT_PARTIAL = 3  # a batch job skipped some bad items and wrote the good ones


class VidjaxError(Exception):
  """An error the user can fix. `str()` gives 'input: problem. fix'."""

  def __init__(self, input_name: str, problem: str, fix: str):
    self.input_name, self.problem, self.fix = str(input_name), problem, fix
    super().__init__(f"{self.input_name}: {problem}. Fix: {fix}")


class InputError(VidjaxError):
  """A corrupt, empty, missing or wrong-shaped input (file, array, argument)."""


class ConfigError(VidjaxError):
  """An inconsistent configuration or checkpoint."""


def is_number(value: Any, *, integer: bool = False) -> bool:
  """A finite real number (Python or numpy, not a bool); with `integer`, an integral type."""
  kind = numbers.Integral if integer else numbers.Real
  return isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)


def check_number(name: str, value: Any, low: float | None, high: float | None, fix: str, *,
                 integer: bool = False, error: type[VidjaxError] = InputError) -> int | float:
  """The project's one number check: `value` is a finite number (an integer with `integer`) in
  [low, high] (None: unbounded); returns it, else raises `error` naming `name`."""
  if integer and not is_number(value, integer=True):
    raise error(name, f"{value!r} is not an integer", fix)
  if not is_number(value) or (low is not None and value < low) or (high is not None and value > high):
    raise error(name, f"{value!r} is outside [{low}, {'inf' if high is None else high}]", fix)
  return value


def usual_mode(is_dir: bool = False) -> int:
  """The mode open() or mkdir() would give a new file or directory under the current umask."""
  umask = os.umask(0)
  os.umask(umask)
  return (0o777 if is_dir else 0o666) & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[str]:
  """Yields a temporary sibling path; on success renames it to `path`, on failure removes it.

  Use for every file or directory the library writes:
    with atomic_path(out) as tmp:
      write_mp4(tmp, frames)
  The temporary name keeps the suffix so that writers that pick a format by suffix still work.
  """
  path = os.fspath(path)
  parent = os.path.dirname(os.path.abspath(path)) or "."
  os.makedirs(parent, exist_ok=True)
  base = os.path.basename(path)
  stem, suffix = os.path.splitext(base)
  if is_dir:
    tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
  else:
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.tmp-", suffix=suffix, dir=parent)
    os.close(fd)
  try:
    yield tmp
    # mkstemp/mkdtemp create owner-only files; give the result the usual umask-based mode so that
    # other users and services (a cluster's data readers) can read it.
    if os.path.exists(tmp):
      os.chmod(tmp, usual_mode(is_dir))
    if is_dir and os.path.isdir(path):
      shutil.rmtree(path)
    os.replace(tmp, path)
  except BaseException:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
    elif os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(path: str | os.PathLike, value: Any) -> None:
  """`value` as JSON (indent 1) at `path`, written whole or not at all (`atomic_path`)."""
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    json.dump(value, f, indent=1)
