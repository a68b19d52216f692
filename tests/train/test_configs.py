"""Every experiment config builds its model (shapes only, nothing allocated) and states its command."""

from __future__ import annotations

import importlib
import pathlib

import jax
import pytest

from vidjax import toyworld
from vidjax.train import loop, state as state_lib

CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).parents[2] / "configs").glob("*.py")
                 if p.stem not in ("__init__", "base", "gen1"))


@pytest.mark.parametrize("name", CONFIGS)
def test_experiment_config_builds_its_model(name, tmp_path):
  module = importlib.import_module(f"configs.{name}")
  assert "vidjax train --config configs/" in module.__doc__
  config = module.get_config()
  # Only text content reads captions: an image-content config (Gen-1's) must work without a tokenizer.
  if config.model.content == "text":
    toyworld.save_tokenizer(tmp_path / "tok")
    config.data.tokenizer_dir = str(tmp_path / "tok")
  model = loop.build_model(config)
  params = jax.eval_shape(model.init, jax.random.key(0))
  labels = state_lib.trainable_labels(params, config.train.trainable)
  assert "train" in jax.tree_util.tree_leaves(labels)
  assert model.config.unet.in_channels == model.config.vae.latent_channels + model.config.structure_channels
