"""Fixtures shared by the training-loop test files."""

from __future__ import annotations

import pytest

import tiny_config
from vidjax.train import toy


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """Toy shards and tokenizer shared by every run in this module."""
  folder = tmp_path_factory.mktemp("data")
  config = tiny_config.tiny_config(**{"data.data_dir": str(folder / "shards"), "data.tokenizer_dir": str(folder / "tok")})
  toy.ensure_data(config, str(folder))
  return {"data.data_dir": str(folder / "shards"), "data.tokenizer_dir": str(folder / "tok")}
