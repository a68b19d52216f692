"""Fixtures shared by the training-loop test files."""

from __future__ import annotations

import pytest

import tiny_config
from vidjax.train import toy


@pytest.fixture(scope="module")
def loop_base(tmp_path_factory):
  """The overrides every loop run in this module starts from: its toy shards and tokenizer (made
  once) and the loop tests' model, `tiny_config.LOOP_MODEL`."""
  folder = tmp_path_factory.mktemp("data")
  config = tiny_config.tiny_config(**{"data.data_dir": str(folder / "shards"), "data.tokenizer_dir": str(folder / "tok")})
  toy.ensure_data(config, str(folder))
  return {"data.data_dir": str(folder / "shards"), "data.tokenizer_dir": str(folder / "tok"), **tiny_config.LOOP_MODEL}
