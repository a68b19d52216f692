"""`vidjax train`'s driver: the config is input only (stages return what they produce)."""

from __future__ import annotations

import ast
import pathlib

import pytest

from configs import toy
from vidjax.errors import ConfigError
from vidjax.models import build
from vidjax.train import main

TRAIN = pathlib.Path(main.__file__).parent


def test_stage_outputs_go_into_a_locked_copy_and_the_given_config_is_left_as_it_was():
  config = toy.get_config()
  before = config.to_json_best_effort()
  derived = main.with_values(config, {"init_from": "a,b", "model.vae.scaling_factor": 0.5, "data.data_dir": "/d"})
  assert (derived.init_from, derived.model.vae.scaling_factor, derived.data.data_dir) == ("a,b", 0.5, "/d")
  assert config.to_json_best_effort() == before
  with pytest.raises(AttributeError):
    derived.new_field = 1  # locked: no field can be added
  with pytest.raises(ConfigError, match="model.vae.no_such_field"):
    main.with_values(config, {"model.vae.no_such_field": 1})


def test_no_training_module_assigns_into_a_config():
  """`config.x = ...` or `config.a.b = ...` anywhere in vidjax/train (a copy made for a loader is named otherwise)."""
  writes = []
  for path in sorted(TRAIN.glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      targets = (node.targets if isinstance(node, ast.Assign)
                 else [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
      for target in targets:
        for leaf in ast.walk(target):
          root = leaf
          while isinstance(root, (ast.Attribute, ast.Subscript)):
            root = root.value
          if leaf is not root and isinstance(leaf, ast.Attribute) and isinstance(root, ast.Name) \
              and root.id == "config":
            writes.append(f"{path.name}:{node.lineno}")
  assert not writes, f"stages write into the config: {sorted(set(writes))}"
  assert "lock_config=True" in (TRAIN / "main.py").read_text()


def test_image_buckets_off_the_models_size_multiple_stop_the_job_before_the_data_and_the_stages(tmp_path):
  """The toy job builds data and trains a VAE before the main stage; a bad bucket must not wait for them."""
  config = toy.get_config()
  multiple = build.size_multiple(config)
  config.data.image_buckets = ((multiple, multiple), (multiple, multiple + multiple // 2))
  with pytest.raises(ConfigError, match=f"data.image_buckets: .* size multiple {multiple} "):
    main.run(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
