"""The context stage: the UNet's image projection fitted on a frozen tiny CLIP and a tiny text model, resumed
exactly after a crash, its loss falling, its null pairs drawn at the configured rate, its config checked,
and its params merged by path into the main stage's `init_from`; main.run runs it alone."""

from __future__ import annotations

import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import crashing
import tiny_config
from vidjax import tree
from vidjax.convert import pretrained
from vidjax.data.loader import Loader
from vidjax.errors import ConfigError
from vidjax.models.build import build_model
from vidjax.train import clip_stage, context_stage, main, surgery
from vidjax.train.checkpoint import load_params

STEPS, CRASH_AT = 10, 4
WIDTH = 16  # the tiny text model's hidden size = the image embedding's width = the UNet's context width


def _source_model(loop_base, directory: str) -> str:
  """A pretrained directory holding a random tiny text model (text encoder and UNet), the source checkpoint."""
  model = build_model(tiny_config.tiny_config(**{k: v for k, v in loop_base.items() if k.startswith("data.")}))
  params = jax.jit(model.init)(jax.random.key(7))
  return pretrained.save_pretrained(directory, {name: (getattr(model.config, name), params[name])
                                                for name in ("text_encoder", "unet")})


def _config(loop_base, text_from: str) -> ml_collections.ConfigDict:
  config = tiny_config.tiny_config(**{k: v for k, v in loop_base.items() if k.startswith("data.")})
  config.model.content = "image"
  config.model.image_encoder.update(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                                    image_size=16, patch_size=8, projection_dim=WIDTH)
  config.model.unet.image_context_tokens = config.data.max_caption_tokens
  text = dict(config.model.text_encoder.to_dict(), projection_dim=WIDTH)
  config.clip_stage = ml_collections.ConfigDict(dict(num_steps=2, lr=3e-3, warmup_steps=1, weight_decay=0.0,
                                                     batch_size=8, retrieval_scenes=3, text_encoder=text))
  config.context_stage = ml_collections.ConfigDict(dict(
      num_steps=STEPS, lr=1e-2, warmup_steps=1, weight_decay=0.0, batch_size=8, null_fraction=0.1,
      text_from=text_from, clip_from="", eval_scenes=5))
  config.checkpoint.every_steps = CRASH_AT
  return config


def _mean_loss(config, params, constants) -> float:
  """The stage's loss on the first batch, averaged over 16 draws of frames and null pairs."""
  loader = Loader(main.with_values(config, {"data.shuffle": False}).data)
  batch = next(loader)
  loader.close()
  training = context_stage.ContextTraining(config)
  loss = jax.jit(jax.vmap(lambda key: training.batch_loss(params, constants, jnp.asarray(batch["tokens"]),
                                                          jnp.asarray(batch["frames"]), key)[0]))
  return float(jnp.mean(loss(jax.random.split(jax.random.key(0), 16))))


@pytest.fixture(scope="module")
def runs(loop_base, tmp_path_factory):
  """A CLIP of 2 steps; one context run straight through, one crashed after its step-4 checkpoint and relaunched."""
  text_from = _source_model(loop_base, str(tmp_path_factory.mktemp("source") / "model"))
  config = _config(loop_base, text_from)
  clip_dir = clip_stage.train_clip(config, str(tmp_path_factory.mktemp("clip")))
  straight, crashed = (str(tmp_path_factory.mktemp(name)) for name in ("straight", "crashed"))
  for workdir in (straight, crashed):
    shutil.copytree(clip_dir, f"{workdir}/clip_stage/checkpoints")
  context_stage.train_context(config, straight)
  crashing.crash_after_batches(CRASH_AT, lambda: context_stage.train_context(config, crashed))
  at_crash = load_params(f"{crashed}/context_stage/checkpoints")
  directory = context_stage.train_context(config, crashed)
  training = context_stage.ContextTraining(config)
  return {"config": config, "training": training, "constants": training.constants(load_params(clip_dir)),
          "at_crash": at_crash, "workdir": crashed, "directory": directory, "text_from": text_from,
          "straight": load_params(f"{straight}/context_stage/checkpoints"), "resumed": load_params(directory)}


def test_a_relaunched_stage_resumes_from_its_checkpoint_and_ends_bit_equal(runs):
  straight, resumed = tree.flatten(runs["straight"]), tree.flatten(runs["resumed"])
  assert sorted(straight) == [("unet", "encoder_hid_proj", layer, name)
                              for layer in ("image_embeds", "norm") for name in ("bias", ("kernel", "scale")[layer == "norm"])]
  for path, value in straight.items():
    np.testing.assert_array_equal(resumed[path], value, err_msg="/".join(path))
  kernel = lambda params: params["unet"]["encoder_hid_proj"]["image_embeds"]["kernel"]
  assert not np.array_equal(kernel(runs["at_crash"]), kernel(runs["resumed"]))


def test_the_loss_falls(runs):
  config, constants = runs["config"], runs["constants"]
  fresh = jax.jit(runs["training"].init)(jax.random.key(0))
  start, early, late = (_mean_loss(config, p, constants) for p in (fresh, runs["at_crash"], runs["resumed"]))
  assert late < early < start, (start, early, late)
  assert late < 0.8 * start


def test_null_pairs_are_drawn_at_the_configured_rate_and_are_a_zero_embedding_and_the_empty_prompt(runs):
  training, params, constants = runs["training"], runs["resumed"], runs["constants"]
  n, length = 4000, runs["config"].data.max_caption_tokens
  keys = jax.random.split(jax.random.key(1), 2)
  embeds = jax.random.normal(keys[0], (n, WIDTH))
  tokens = jax.random.randint(keys[1], (n, length), 0, 40)
  _, metrics = jax.jit(training.loss)(params, constants, embeds, tokens, jax.random.key(2))
  assert abs(float(metrics["null_pairs"]) - 0.1) < 0.02  # 3 standard deviations of 4000 draws at 0.1
  always = context_stage.ContextTraining(main.with_values(runs["config"], {"context_stage.null_fraction": 1.0}))
  loss, metrics = jax.jit(always.loss)(params, constants, embeds[:8], tokens[:8], jax.random.key(3))
  assert float(metrics["null_pairs"]) == 1.0
  null = always.project(params, jnp.zeros((1, WIDTH)))
  expected = jnp.mean((null - always.targets(constants, always.null_tokens)) ** 2)
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
  # ...and the null pair is the empty prompt's context, not some caption's.
  assert not np.allclose(always.targets(constants, always.null_tokens), always.targets(constants, tokens[:1]))


def test_the_token_count_and_the_widths_must_match_the_source_text_model(runs):
  config = main.with_values(runs["config"], {"model.unet.image_context_tokens": 8})
  with pytest.raises(ConfigError, match="image_context_tokens.*data.max_caption_tokens = 24"):
    context_stage.ContextTraining(config)
  config = main.with_values(runs["config"], {"model.unet.cross_attention_dim": 12})
  with pytest.raises(ConfigError, match="context_stage.text_from.*16 wide, the UNet's context.*12"):
    context_stage.ContextTraining(config)


def test_an_image_embedding_of_another_width_projects_to_the_text_contexts_width(runs):
  """A wider CLIP than the UNet's context (configs/toy_gen1.py's 128 on a 64-wide UNet): the projection
  maps the embedding's width to the context's, and its loss reads the source text model's contexts."""
  config = main.with_values(runs["config"], {"model.image_encoder.projection_dim": 12,
                                             "clip_stage.text_encoder.projection_dim": 12})
  with pytest.raises(ConfigError, match="model.unet.encoder_hid_dim.*image embedding is 12 wide.*= 12"):
    context_stage.ContextTraining(config)
  config = main.with_values(config, {"model.unet.encoder_hid_dim": 12, "context_stage.null_fraction": 0.0})
  training = context_stage.ContextTraining(config)
  params = training.init(jax.random.key(0))
  length = config.data.max_caption_tokens
  kernel = nn.unbox(params)["unet"]["encoder_hid_proj"]["image_embeds"]["kernel"]  # linear (mult 0)
  assert kernel.shape == (12, length * WIDTH)
  embeds = jax.random.normal(jax.random.key(1), (3, 12))
  assert training.project(params, embeds).shape == (3, length, WIDTH)
  tokens = jax.random.randint(jax.random.key(2), (3, length), 0, 40)
  constants = {"text_encoder": training.text_params}
  loss, _ = training.loss(params, constants, embeds, tokens, jax.random.key(3))
  expected = jnp.mean((training.project(params, embeds) - training.targets(constants, tokens)) ** 2)
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)


def test_a_missing_clip_checkpoint_names_the_fix(runs, tmp_path):
  with pytest.raises(ConfigError, match="context_stage.clip_from.*no CLIP stage checkpoint.*train the CLIP stage first"):
    context_stage.train_context(runs["config"], str(tmp_path))
  assert not (tmp_path / "context_stage").exists()


def test_init_from_merges_the_stage_into_the_source_checkpoint_by_path(runs, tmp_path):
  """The main stage reads `<source>,<context dir>`: the source's components keep every tensor, the stage
  adds the UNet's projection; a later source replaces an earlier one's tensors at the same paths."""
  source = {name: tree.flatten(params) for name, (_, params) in pretrained.load_pretrained(runs["text_from"]).items()}
  merged = surgery.load_weights(f"{runs['text_from']},{runs['directory']}")
  assert sorted(merged) == ["text_encoder", "unet"]
  stage = tree.flatten(runs["resumed"]["unet"])
  assert tree.flatten(merged["unet"]).keys() == source["unet"].keys() | stage.keys()
  for name, path, value in [("unet", p, v) for p, v in stage.items()] + [
      (name, p, v) for name, flat in source.items() for p, v in flat.items()]:
    np.testing.assert_array_equal(tree.flatten(merged[name])[path], value, err_msg=f"{name}/{'/'.join(path)}")
  # A second text model, one tensor changed: later wins at that path, the rest agree.
  config, params = pretrained.load_pretrained(runs["text_from"])["text_encoder"]
  changed = jax.tree.map(np.copy, params)
  changed["final_layer_norm"]["scale"] = changed["final_layer_norm"]["scale"] + 1.0
  other = pretrained.save_pretrained(str(tmp_path / "other"), {"text_encoder": (config, changed)})
  later = surgery.load_weights(f"{runs['text_from']},{runs['directory']},{other}")
  for path, value in tree.flatten(changed).items():
    np.testing.assert_array_equal(tree.flatten(later["text_encoder"])[path], value)
  assert tree.flatten(later["unet"]).keys() == source["unet"].keys() | stage.keys()


def test_main_runs_the_context_stage_and_writes_its_held_out_figure(runs, tmp_path, capsys):
  shutil.copytree(f"{runs['workdir']}/clip_stage/checkpoints", tmp_path / "clip_stage" / "checkpoints")
  config = main.with_values(runs["config"], {"clip_stage.num_steps": 0, "train.num_steps": 0,
                                             "context_stage.num_steps": 2})
  assert main.run(config, str(tmp_path)) == 0
  out = capsys.readouterr().out
  assert "Context stage done: over 5 held-out toy scenes" in out and "no main stage" in out
  report = json.loads((tmp_path / "context_stage" / "context_eval.json").read_text())
  assert report["num_scenes"] == 5 and report["first_seed"] == 500_000
  assert report["variance"] > 0 and report["mse"] > 0 and report["r2"] == pytest.approx(
      1 - report["mse"] / report["variance"])
  assert f"MSE {report['mse']:.4f}" in out


def test_an_mlp_projection_trains_and_has_the_unets_paths_and_shapes(runs, tmp_path):
  """model.unet.image_projection_mult > 0: the stage fits the UNet's MLP projection (diffusers' FaceID one)."""
  config = main.with_values(runs["config"], {"model.unet.image_projection_mult": 2, "context_stage.num_steps": 6})
  shutil.copytree(f"{runs['workdir']}/clip_stage/checkpoints", tmp_path / "clip_stage" / "checkpoints")
  trained = load_params(context_stage.train_context(config, str(tmp_path)))
  unet = nn.unbox(jax.eval_shape(build_model(config).init, jax.random.key(0)))["unet"]["encoder_hid_proj"]
  shapes = {path: leaf.shape for path, leaf in tree.flatten(unet).items()}
  assert {path: value.shape for path, value in tree.flatten(trained["unet"]["encoder_hid_proj"]).items()} == shapes
  assert ("ff", "net_0", "proj", "kernel") in shapes and shapes[("ff", "net_2", "kernel")] == (2 * WIDTH, 24 * WIDTH)
  fresh = jax.jit(context_stage.ContextTraining(config).init)(jax.random.key(0))
  assert _mean_loss(config, trained, runs["constants"]) < 0.8 * _mean_loss(config, fresh, runs["constants"])
