"""What `pip install` puts in site-packages: vidjax only (configs inside it), and configs found by path."""

from __future__ import annotations

import pathlib
import shutil
import sys
import tomllib

import pytest

from vidjax.errors import ConfigError
from vidjax.train import main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_only_vidjax_is_installed_with_the_configs_inside_it():
  setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
  subpackages = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "vidjax").rglob("__init__.py")}
  subpackages |= {".".join(("vidjax", *p.parent.relative_to(ROOT).parts))
                  for p in (ROOT / "configs").rglob("__init__.py")}
  assert set(setuptools["packages"]) == subpackages, "list every vidjax package (and configs/ subfolder) in pyproject"
  assert {p.split(".")[0] for p in setuptools["packages"]} == {"vidjax"}  # no top-level configs, launch, ...
  assert setuptools["package-dir"] == {"vidjax.configs": "configs"}


def test_a_bare_configs_path_is_the_installed_copy_where_the_folder_has_none(tmp_path, monkeypatch):
  installed = tmp_path / "site-packages" / "vidjax" / "configs"
  shutil.copytree(ROOT / "configs", installed, ignore=shutil.ignore_patterns("__pycache__"))
  monkeypatch.setattr(main, "INSTALLED_CONFIGS", str(installed))
  (tmp_path / "elsewhere").mkdir()
  monkeypatch.chdir(tmp_path / "elsewhere")
  saved = {name: module for name, module in sys.modules.items() if name == "configs" or name.startswith("configs.")}
  try:
    for name in saved:
      del sys.modules[name]
    path = main.resolve_config("configs/toy.py")
    assert path == str(installed / "toy.py")
    config = main.load_config("configs/toy.py", {"train.num_steps": 7})  # what notebooks call
    assert config.train.num_steps == 7 and config.is_locked
    # its `from configs import base` reads the same folder
    assert sys.modules["configs.base"].__file__ == str(installed / "base.py")
    assert config.final_edit.num_inference_steps == 25
    assert main._resolve_config_flag("--config=configs/gen1.py", "") == f"--config={installed / 'gen1.py'}"
    assert main._resolve_config_flag("--config.train.lr=1", "") == "--config.train.lr=1"  # an override: kept
  finally:
    for name in [n for n in sys.modules if n == "configs" or n.startswith("configs.")]:
      del sys.modules[name]
    sys.modules.update(saved)


def test_a_checkout_path_is_used_as_given_and_binds_its_own_configs(monkeypatch):
  monkeypatch.chdir(ROOT)
  assert main.resolve_config("configs/toy.py:arg") == "configs/toy.py:arg"
  assert sys.modules["configs"].__file__ == str(ROOT / "configs" / "__init__.py")


def test_load_config_names_a_missing_file(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ConfigError, match="no such config file"):
    main.load_config("configs/no_such_experiment.py")
