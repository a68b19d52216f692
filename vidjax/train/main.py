"""`vidjax train --config configs/<experiment>.py --workdir <dir> [--config.train.lr=...]`.

Runs, in order, what the config asks for:
  1. `data.build` (source 'toy'): build the toy shards and tokenizer into the workdir if missing;
  2. `vae_stage.num_steps > 0`: train the VAE first; the main stage starts from its VAE, and from
     `init_from` for the rest. A run with `init_from` skips the stage unless `vae_stage.init_from`
     is set too (e.g. a new decoder for a trained model);
  3. `clip_stage.num_steps > 0`: train CLIP's text and vision towers contrastively (a toy Gen-1
     model's frozen content encoder); the main stage reads its towers through `init_from`;
  4. `context_stage.num_steps > 0`: fit the UNet's image projection on the CLIP stage's vision
     tower so image embeddings read as the source text model's context; read through `init_from`;
  5. `prior_stage.num_steps > 0`: train the text -> image-embedding prior on those frozen towers
     (`prior_stage.clip_from`, or this workdir's CLIP stage);
  6. the main stage, `train_and_evaluate` (none when `train.num_steps` is 0: the job runs its stages only);
  7. `final_edit.enabled`: the toy recolouring benchmark on a few held-out scenes (their depth, new
     colours in the caption), printed, in `<workdir>/toy_edit.json`, the first as `<workdir>/edit.mp4`.
Relaunching with the same workdir resumes wherever the job stopped.

Configs are found by path, as big_vision's: `--config configs/toy.py` is that file of the current
folder (a checkout); where it does not exist, a bare `configs/NAME.py` is the copy installed with
vidjax (`vidjax/configs`, mapped from the checkout's configs/ by pyproject.toml). The config files'
own `from configs import base` reads the folder the config file is in: `configs` is bound to it for
the run, not installed as a top-level package.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time

import ml_collections
from absl import flags
from ml_collections import config_flags

import vidjax
from vidjax.errors import ConfigError


def _installed_configs() -> str:
  """Where the installed experiment configs are: pyproject.toml maps configs/ to vidjax.configs, which is
  vidjax/configs in a wheel and the checkout's configs/ in an editable install."""
  spec = importlib.util.find_spec("vidjax.configs")
  if spec is not None and spec.submodule_search_locations:
    return list(spec.submodule_search_locations)[0]
  return os.path.join(os.path.dirname(vidjax.__file__), "configs")  # a checkout on PYTHONPATH, not installed


INSTALLED_CONFIGS = _installed_configs()

_FLAGS = flags.FlagValues()
_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py)", flag_values=_FLAGS,
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, logs and samples go", flag_values=_FLAGS)


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(a in ("-h", "--help") for a in argv):
    print(__doc__)
    return 0
  argv = resolve_config_flags(argv)
  try:
    _FLAGS(["vidjax train"] + argv)
  except flags.Error as e:
    raise ConfigError("vidjax train arguments", str(e), "pass --config configs/<experiment>.py --workdir <dir>") from e
  flags.FLAGS.mark_as_parsed()  # Grain worker processes read absl flags
  if _CONFIG.value is None or not _WORKDIR.value:
    raise ConfigError("vidjax train", "--config and --workdir are required", "e.g. --config configs/toy.py --workdir runs/toy")
  return run(_CONFIG.value, _WORKDIR.value)


def resolve_config(path: str) -> str:
  """--config PATH[:ARGS] -> the file it names (see the module docstring), with `configs` bound to its folder."""
  file, sep, rest = path.partition(":")
  parts = os.path.normpath(file).split(os.sep)
  if not os.path.isfile(file) and not os.path.isabs(file) and parts[0] == "configs":
    installed = os.path.join(INSTALLED_CONFIGS, *parts[1:])
    if os.path.isfile(installed):
      file = installed
  bind_configs_package(os.path.dirname(os.path.abspath(file)))
  return file + sep + rest


def load_config(path: str, overrides: dict[str, object] | None = None) -> ml_collections.ConfigDict:
  """The config `--config PATH[:ARG]` would give (found the same way), with the dotted `overrides` set, locked.

  For notebooks and scripts: `load_config("configs/toy.py", {"train.num_steps": 60})`.
  """
  file, _, arg = resolve_config(path).partition(":")
  if not os.path.isfile(file):
    raise ConfigError(path, "no such config file (nor an installed one of that name)",
                      "pass the path of a configs/*.py file, e.g. configs/toy.py")
  spec = importlib.util.spec_from_file_location(f"_vidjax_config_{os.path.basename(file)[:-3]}", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return with_values(module.get_config(arg) if arg else module.get_config(), overrides or {})


def bind_configs_package(folder: str) -> None:
  """Makes `import configs` the package in `folder` (a configs/ folder with __init__.py) for this process."""
  init = os.path.join(folder, "__init__.py")
  if os.path.basename(folder) != "configs" or not os.path.isfile(init):
    return
  loaded = sys.modules.get("configs")
  if loaded is not None and os.path.dirname(os.path.abspath(getattr(loaded, "__file__", "") or "")) == folder:
    return
  for name in [n for n in sys.modules if n == "configs" or n.startswith("configs.")]:
    del sys.modules[name]  # another folder's configs: the config file's own folder wins
  spec = importlib.util.spec_from_file_location("configs", init, submodule_search_locations=[folder])
  module = importlib.util.module_from_spec(spec)
  sys.modules["configs"] = module
  spec.loader.exec_module(module)


def resolve_config_flags(argv: list[str]) -> list[str]:
  """argv with the path of its --config flag resolved by `resolve_config` (also for `vidjax evaluate`)."""
  return [_resolve_config_flag(a, argv[i - 1] if i else "") for i, a in enumerate(argv)]


def _resolve_config_flag(arg: str, previous: str) -> str:
  """Rewrites the path of `--config PATH` / `--config=PATH` (not `--config.x=...` overrides)."""
  if arg.startswith("--config="):
    return "--config=" + resolve_config(arg[len("--config="):])
  if previous == "--config" and not arg.startswith("-"):
    return resolve_config(arg)
  return arg


def with_values(config: ml_collections.ConfigDict, values: dict[str, object]) -> ml_collections.ConfigDict:
  """A locked copy of `config` with the dotted fields of `values` set (existing fields only)."""
  copy = config.copy_and_resolve_references()
  for dotted, value in values.items():
    *parents, leaf = dotted.split(".")
    node = copy
    for name in parents:
      node = node[name]
    if leaf not in node:
      raise ConfigError(dotted, "is not a field of the config", "a stage may only fill fields the config defines")
    node[leaf] = value
  copy.lock()
  return copy


def run(config, workdir: str, *, on_log=None) -> int:
  """The whole job: data (when the config builds it), the VAE, CLIP, context and prior stages, training, the final toy edit.

  A config whose `train.num_steps` is 0 runs only its stages: no `train_and_evaluate`, no final edit.

  on_log(step, values): passed to `loop.train_and_evaluate` (a notebook's live loss plot).
  """
  import jax

  from vidjax.train import clip_stage, context_stage, loop, prior_stage, toy  # heavy imports after argument checks

  # A relaunched (resumed) job compiles the same programs again: keep them on disk.
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "vidjax", "jax"))

  loop.check_data_fits_model(config)  # before the data build and the VAE and CLIP stages
  start = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  # The config is input only: each stage returns what it produced, and the next stages get a copy of
  # the config with those values in place (`with_values`); the given config is left as it was.
  if config.data.get("build") and config.data.build.source:
    data_dir, tokenizer_dir = toy.ensure_data(config, workdir)
    config = with_values(config, {"data.data_dir": data_dir, "data.tokenizer_dir": tokenizer_dir})
  stage = config.get("vae_stage")
  if stage and stage.num_steps > 0 and (not config.init_from or stage.get("init_from")):
    vae_dir, scaling_factor = toy.train_vae_stage(config, loop.build_model(config), workdir)
    config = with_values(config, {"init_from": ",".join(p for p in (config.init_from, vae_dir) if p),
                                  "model.vae.scaling_factor": scaling_factor})
  if config.get("clip_stage") and config.clip_stage.num_steps > 0:
    clip_dir = clip_stage.run_stage(config, workdir)
    config = with_values(config, {"init_from": ",".join(p for p in (config.init_from, clip_dir) if p)})
  if config.get("context_stage") and config.context_stage.num_steps > 0:
    context_dir = context_stage.run_stage(config, workdir)
    config = with_values(config, {"init_from": ",".join(p for p in (config.init_from, context_dir) if p)})
  if config.get("prior_stage") and config.prior_stage.num_steps > 0:
    prior_stage.run_stage(config, workdir)
  if config.train.num_steps == 0:
    print(f"process {jax.process_index()}/{jax.process_count()}: stages done in {time.perf_counter() - start:.0f} s "
          "(train.num_steps = 0: no main stage)")
    return 0
  summary = loop.train_and_evaluate(config, workdir, on_log=on_log)
  figures = ""
  if config.get("final_edit") and config.final_edit.enabled and summary["step"] >= config.train.num_steps:
    report = toy.final_edit(config, workdir)
    figures = (f"; toy benchmark ({report['num_cases']} held-out scenes): IoU {report['mean_iou']:.3f}, "
               f"colour {100 * report['colour_accuracy']:.1f} %")
  losses = ("n/a (no steps run)" if summary["first_smoothed_loss"] is None else
            f"{summary['first_smoothed_loss']:.6f} (first) -> {summary['last_smoothed_loss']:.6f} (last)")
  print(f"process {jax.process_index()}/{jax.process_count()}: done in {time.perf_counter() - start:.0f} s, "
        f"step {summary['step']}: smoothed loss {losses}{figures}")
  return 0
