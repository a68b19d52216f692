"""The README's main job (configs/toy.py): Make-Your-Video's recipe on the embedded checkpoint, end to end."""

from __future__ import annotations

import json
import os
import re

import jax
import numpy as np

from configs import toy
from vidjax import toyworld, tree
from vidjax.models.build import build_model
from vidjax.parallel import sharding as sharding_lib
from vidjax.train import main, surgery
from vidjax.train.checkpoint import load_params


def _trainable(config, path: str) -> bool:
  return any(re.fullmatch(p, path) for p in config.train.trainable)


def test_the_toy_job_loads_every_embedded_param_but_the_temporal_layers_which_alone_train():
  config = main.with_values(toy.get_config(), {"data.tokenizer_dir": os.path.join(toyworld.CHECKPOINT, "tokenizer")})
  model = build_model(config)
  # Distinct fill values stand in for the fresh init (a real init compiles the whole model).
  abstract = sharding_lib.unbox(jax.eval_shape(model.init, jax.random.key(0)))
  fresh = jax.tree_util.tree_map(lambda s: np.full(s.shape, 7.0, s.dtype), abstract)
  source = surgery.load_weights(config.init_from)
  merged, report = surgery.merge_params(fresh, source, exclude=tuple(config.init_exclude))
  # The config's model is the checkpoint's: every one of its tensors has a place, none is reshaped.
  assert report.unused == [] and report.copied > 0
  temporal = sorted(p for p in map("/".join, tree.flatten(fresh)) if "/temporal_" in p)
  assert sorted(report.kept_init) == temporal and temporal
  flat_merged, flat_source, flat_fresh = tree.flatten(merged), tree.flatten(source), tree.flatten(fresh)
  for path, value in flat_merged.items():
    name = "/".join(path)
    expected = flat_fresh[path] if name in temporal else np.asarray(flat_source[path], np.float32)
    assert np.array_equal(value, expected), name
    assert _trainable(config, name) == (name in temporal), name  # frozen: VAE, text tower, spatial UNet


def test_the_toy_job_trains_the_temporal_layers_and_ends_with_its_benchmark_figures(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  overrides = {"data.build.num_examples": 8, "data.build.examples_per_shard": 8, "data.batch_size": 2,
               "data.prefetch_batches": 0, "mesh.num_devices": 1, "train.num_steps": 2, "train.warmup_steps": 1,
               "checkpoint.every_steps": 2, "checkpoint.async_save": False, "log.every_steps": 1,
               "log.sample_every_steps": 0, "final_edit.num_clips": 1, "final_edit.num_inference_steps": 2}
  config = main.with_values(toy.get_config(), overrides)
  logged = []
  assert main.run(config, workdir, on_log=lambda step, values: logged.append((step, values))) == 0
  out = capsys.readouterr().out
  # The notebooks' live plot hook: every logged step, with the values TensorBoard gets.
  assert [step for step, _ in logged] == [1, 2]
  assert all(np.isfinite(v["loss"]) and "learning_rate" in v for _, v in logged)
  last = out.strip().splitlines()[-1]
  assert re.search(r"step 2: smoothed loss [0-9.]+ \(first\) -> [0-9.]+ \(last\); toy benchmark \(1 held-out "
                   r"scenes\): IoU [01]\.\d{3}, colour \d+\.\d %$", last), last
  with open(os.path.join(workdir, "toy_edit.json")) as f:
    report = json.load(f)
  assert report["num_cases"] == 1 and 0 <= report["mean_iou"] <= 1 and report["settings"]["num_clips"] == 1
  assert os.path.getsize(os.path.join(workdir, "edit.mp4")) > 0
  # Trained: the temporal layers moved from their init, everything else is the checkpoint's, bit for bit.
  trained = tree.flatten(load_params(os.path.join(workdir, "checkpoints")))
  source = tree.flatten(surgery.load_weights(toyworld.CHECKPOINT))
  moved = [p for p, v in trained.items() if "temporal_" in "/".join(p) and np.any(v != 0)]
  assert moved
  assert all(np.array_equal(v, np.asarray(source[p], np.float32)) for p, v in trained.items()
             if "temporal_" not in "/".join(p))
  # Resuming is the loop's, the same for every config: tests/train/test_loop_processes.py kills and resumes runs.
