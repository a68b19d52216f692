"""A crash in the middle of a training stage, for resume tests that run in-process."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from vidjax.data.loader import Loader


def crash_after_batches(num_batches: int, run: Callable[[], Any]) -> None:
  """Runs `run()` with the loader raising KeyboardInterrupt (what a kill leaves: no cleanup of the
  stage's own) when asked for batch `num_batches + 1`; fails if the run ends without asking for it."""
  calls = {"n": 0}
  real_next = Loader.__next__

  def crash(self):
    calls["n"] += 1
    if calls["n"] > num_batches:
      raise KeyboardInterrupt("killed")
    return real_next(self)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(Loader, "__next__", crash)
    with pytest.raises(KeyboardInterrupt):
      run()
