"""The prior stage: trained on a tiny frozen CLIP, resumed exactly after a crash, its loss falling, its
text dropped at the configured rate, and its held-out figure written; main.run runs the stages alone."""

from __future__ import annotations

import contextlib
import io
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import crashing
import tiny_config
from configs import prior_toy
from vidjax import tree
from vidjax.data.loader import Loader
from vidjax.errors import ConfigError, InputError
from vidjax.models.prior import DiffusionPrior, example_inputs, prior_flops
from vidjax.train import clip_stage, export, main, prior_stage
from vidjax.train.checkpoint import load_params

STEPS, CRASH_AT = 10, 4


def _config(loop_base, clip_from: str = "") -> ml_collections.ConfigDict:
  config = tiny_config.tiny_config(**{k: v for k, v in loop_base.items() if k.startswith("data.")})
  config.model.content = "image"
  config.model.image_encoder.update(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                                    image_size=16, patch_size=8, projection_dim=11)
  text = dict(config.model.text_encoder.to_dict(), projection_dim=11)
  config.clip_stage = ml_collections.ConfigDict(dict(num_steps=2, lr=3e-3, warmup_steps=1, weight_decay=0.0,
                                                     batch_size=8, retrieval_scenes=3, text_encoder=text))
  config.prior_stage = prior_toy.prior_stage_config(
      num_steps=STEPS, lr=3e-3, warmup_steps=1, batch_size=8, ema_decay=0.5, clip_from=clip_from, eval_scenes=5,
      num_inference_steps=4, prior=dict(width=12, depth=1, heads=3, ff_mult=2, num_train_timesteps=100))
  config.checkpoint.every_steps = CRASH_AT
  return config


def _mean_loss(config, params, clip_params) -> float:
  """The stage's loss on the first batch, averaged over 16 draws of frames, timesteps and noise."""
  loader = Loader(main.with_values(config, {"data.shuffle": False}).data)
  batch = next(loader)
  loader.close()
  training = prior_stage.PriorTraining(config)
  loss = jax.jit(jax.vmap(lambda key: training.batch_loss(params, clip_params, jnp.asarray(batch["tokens"]),
                                                          jnp.asarray(batch["frames"]), key)[0]))
  return float(jnp.mean(loss(jax.random.split(jax.random.key(0), 16))))


@pytest.fixture(scope="module")
def runs(loop_base, tmp_path_factory):
  """A CLIP of 2 steps; one prior run straight through, one crashed after its step-4 checkpoint and relaunched."""
  clip_dir = clip_stage.train_clip(_config(loop_base), str(tmp_path_factory.mktemp("clip")))
  config = _config(loop_base, clip_from=clip_dir)
  straight = str(tmp_path_factory.mktemp("straight"))
  prior_stage.train_prior(config, straight)
  crashed = str(tmp_path_factory.mktemp("crashed"))
  crashing.crash_after_batches(CRASH_AT, lambda: prior_stage.train_prior(config, crashed))
  at_crash = load_params(f"{crashed}/prior_stage/checkpoints")
  directory = prior_stage.train_prior(config, crashed)
  return {"config": config, "clip": load_params(clip_dir), "at_crash": at_crash, "workdir": crashed,
          "straight": load_params(f"{straight}/prior_stage/checkpoints"), "resumed": load_params(directory),
          "ema": load_params(directory, use_ema=True)}


def test_a_relaunched_stage_resumes_from_its_checkpoint_and_ends_bit_equal(runs):
  assert sorted(runs["resumed"]) == ["prior"]
  straight, resumed = tree.flatten(runs["straight"]), tree.flatten(runs["resumed"])
  assert straight.keys() == resumed.keys()
  for path, value in straight.items():
    np.testing.assert_array_equal(resumed[path], value, err_msg="/".join(path))
  kernel = lambda params: params["prior"]["out_proj"]["kernel"]
  assert not np.array_equal(kernel(runs["at_crash"]), kernel(runs["resumed"]))
  # The EMA is saved beside the params and differs from them.
  assert not np.array_equal(kernel(runs["ema"]), kernel(runs["resumed"]))


def test_the_x0_loss_falls(runs):
  config, clip = runs["config"], runs["clip"]
  fresh = jax.jit(prior_stage.PriorTraining(config).init)(jax.random.key(0))
  start, early, late = (_mean_loss(config, p, clip) for p in (fresh, runs["at_crash"], runs["resumed"]))
  assert late < early < start, (start, early, late)
  assert late < 0.8 * start


def test_text_is_dropped_at_the_configured_rate_and_then_ignored(runs):
  config = runs["config"]
  training = prior_stage.PriorTraining(config)
  c = training.prior.config
  n = 4000
  keys = jax.random.split(jax.random.key(1), 3)
  text = {"hidden": jax.random.normal(keys[0], (n, c.max_text_tokens, c.text_width)),
          "embeds": jax.random.normal(keys[1], (n, c.embed_dim)), "mask": jnp.ones((n, c.max_text_tokens), bool)}
  image = jax.random.normal(keys[2], (n, c.embed_dim))
  _, metrics = jax.jit(training.loss)(runs["resumed"], text, image, jax.random.key(2))
  assert abs(float(metrics["text_dropped"]) - 0.1) < 0.02  # 3 standard deviations of 4000 draws at 0.1
  always = prior_stage.PriorTraining(main.with_values(config, {"prior_stage.prior.text_drop_prob": 1.0}))
  other = {k: -v if k != "mask" else v for k, v in text.items()}
  loss_fn = jax.jit(always.loss)
  first, metrics = loss_fn(runs["resumed"], text, image, jax.random.key(2))
  assert float(metrics["text_dropped"]) == 1.0
  np.testing.assert_allclose(loss_fn(runs["resumed"], other, image, jax.random.key(2))[0], first, rtol=1e-6)
  assert float(jax.jit(training.loss)(runs["resumed"], other, image, jax.random.key(2))[0]) != float(
      jax.jit(training.loss)(runs["resumed"], text, image, jax.random.key(2))[0])


@pytest.fixture(scope="module")
def evaluated(runs):
  """run_stage on the trained crashed-and-resumed run, once: (its prior_eval.json, what it printed)."""
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    prior_stage.run_stage(runs["config"], runs["workdir"])  # trained already: scores only
  with open(f"{runs['workdir']}/prior_stage/prior_eval.json") as f:
    return json.load(f), printed.getvalue()


def test_run_stage_writes_the_held_out_figure(evaluated):
  report, out = evaluated
  assert report["num_scenes"] == 5 and report["first_seed"] == 500_000 and report["num_inference_steps"] == 4
  assert -1.0 <= report["prior_cosine"] <= 1.0 and -1.0 <= report["text_cosine"] <= 1.0
  assert report["image_embed_norm"] > 0
  assert "over 5 held-out toy scenes" in out and f"prior sample {report['prior_cosine']:.4f}" in out


def test_main_runs_the_stages_alone_when_train_has_no_steps(runs, tmp_path, capsys):
  config = main.with_values(runs["config"], {"clip_stage.num_steps": 0, "train.num_steps": 0,
                                             "prior_stage.num_steps": 2})
  assert main.run(config, str(tmp_path)) == 0
  out = capsys.readouterr().out
  assert "Prior stage done" in out and "no main stage" in out
  assert (tmp_path / "prior_stage" / "prior_eval.json").exists() and not (tmp_path / "checkpoints").exists()


def test_a_missing_clip_checkpoint_names_the_setting(runs, tmp_path):
  config = main.with_values(runs["config"], {"prior_stage.clip_from": str(tmp_path / "none")})
  with pytest.raises(ConfigError, match="prior_stage.clip_from"):
    prior_stage.train_prior(config, str(tmp_path))


def test_the_full_size_config_is_dalle2s_1b_prior_at_the_cost_its_docstring_states():
  from configs import prior_full

  config = prior_full.get_config()
  prior = prior_stage.prior_config(config)
  assert (prior.embed_dim, prior.text_width, prior.max_text_tokens) == (768, 768, 77)
  params = jax.eval_shape(lambda key: DiffusionPrior(prior).init(key, **example_inputs(prior)), jax.random.key(0))
  count = sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params))
  flops = prior_flops(prior, config.prior_stage.batch_size)
  stated = f"{count / 1e9:.2f} B params", f"{flops['train_step'] / 1e15:.1f} PFLOP per training step"
  for text in stated:
    assert text in " ".join(prior_full.__doc__.split()), text


def test_the_export_takes_the_priors_ema_its_clips_text_tower_and_the_measured_content_scale(runs, evaluated,
                                                                                                tmp_path):
  clip = runs["clip"]
  components, entry, tokenizer = export.prior_components(runs["workdir"], clip["image_encoder"], None)
  (prior_config, prior), (text_config, text) = components["prior"], components["text_encoder"]
  assert prior_config == prior_stage.prior_config(runs["config"]) and text_config.projection_dim == 11
  for ours, theirs in ((prior, runs["ema"]["prior"]), (text, clip["text_encoder"])):
    ours, theirs = tree.flatten(ours), tree.flatten(theirs)
    assert ours.keys() == theirs.keys()
    for path, value in theirs.items():
      np.testing.assert_array_equal(np.asarray(ours[path]), np.asarray(value), err_msg="/".join(path))
  assert entry["image_embed_norm"] == evaluated[0]["image_embed_norm"] and entry["step"] == STEPS
  assert tokenizer == runs["config"].data.tokenizer_dir
  assert export.prior_components(runs["workdir"], clip["image_encoder"], 2.5)[1]["image_embed_norm"] == 2.5
  with pytest.raises(ConfigError, match="image_embed_norm -1.0 is not a positive number.*--prior-embed-norm"):
    export.prior_components(runs["workdir"], clip["image_encoder"], -1.0)
  # A prior trained on another CLIP predicts embeddings of another image tower: refused.
  other = jax.tree.map(lambda x: np.asarray(x) + 1.0, clip["image_encoder"])
  with pytest.raises(ConfigError, match="image tower is not this run's"):
    export.prior_components(runs["workdir"], other, None)
  with pytest.raises(InputError, match="no finished prior checkpoint.*point --prior at the workdir"):
    export.prior_components(str(tmp_path), clip["image_encoder"], None)
  assert not (tmp_path / "prior_stage").exists()  # the failed look did not make the folder
