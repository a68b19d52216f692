"""Gen-1's text -> image-embedding prior on the toy world, on a trained toy CLIP (configs/toy_gen1.py's).

  vidjax train --config configs/toy_gen1.py --workdir runs/toy_gen1   # its CLIP stage, first
  vidjax train --config configs/prior_toy.py --workdir runs/prior_toy

The prior stage only (`train.num_steps` 0: no main stage, no final edit): a DALL-E 2 diffusion prior
(`vidjax.models.prior`, 4 blocks of width 128) trained on the frozen toy CLIP of
`prior_stage.clip_from` (runs/toy_gen1's CLIP stage; its towers are configs/toy_gen1.py's), on the
same 16384 toy clips: captions -> the CLIP image embedding of a random frame. Then the held-out
figure on 200 toy scenes outside the training seeds, printed and in
<workdir>/prior_stage/prior_eval.json: the mean cosine of the prior's samples with each scene's true
image embedding (its middle frame's), against the mean cosine of the caption's text embedding with it.
Measured (2026-12-07, 2-core AMD EPYC Zen 3, beside the toy_gen1 main stage): 1500 steps in 1642 s
with the held-out figure; mean cosine 0.945 for the prior's samples (guidance 1) against 0.901 for
the text embeddings, on runs/toy_gen1's 16384-scene NegCLIP (caption -> frame retrieval 93.5 %);
caption -> frame top-1 92.5 % with the samples as queries, 93.5 % with the text. (2026-12-03, on the
2048-scene plain CLIP: 0.917 against 0.887; 0.914 at guidance 1.5, 0.909 at 2, -0.03 unconditional.)
Point it at another CLIP with --config.prior_stage.clip_from=<workdir>/clip_stage/checkpoints
(towers of configs/toy_gen1.py's sizes); reuse runs/toy_gen1's clips with
--config.data.data_dir=runs/toy_gen1/data --config.data.tokenizer_dir=runs/toy_gen1/tokenizer.
"""

from __future__ import annotations

import ml_collections

from configs import toy_gen1


def prior_stage_config(**overrides) -> ml_collections.ConfigDict:
  """The prior stage's fields: training, the held-out figure, and `prior` (PriorConfig's shape and noise fields)."""
  prior = dict(width=128, depth=4, heads=4, ff_mult=4, num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
               text_drop_prob=0.1)
  fields = dict(num_steps=3000, lr=3e-4, warmup_steps=100, weight_decay=0.06, batch_size=128, ema_decay=0.999,
                clip_from="", eval_scenes=200, eval_seed=0, guidance_scale=1.0, num_inference_steps=64)
  prior.update(overrides.pop("prior", {}))
  return ml_collections.ConfigDict(dict(fields, **overrides, prior=prior))


def get_config() -> ml_collections.ConfigDict:
  config = toy_gen1.get_config()
  config.clip_stage.num_steps = 0  # read from clip_from, not trained again
  config.context_stage.num_steps = 0  # the video model's, not the prior's
  # 1500 steps fit in about half an hour of 2 shared cores; the EMA's half-life is about 70 steps of it.
  config.prior_stage = prior_stage_config(num_steps=1500, lr=6e-4, ema_decay=0.99,
                                          clip_from="runs/toy_gen1/clip_stage/checkpoints")
  config.train.num_steps = 0  # the prior stage only
  config.final_edit.enabled = False
  config.checkpoint.every_steps = 500
  config.log.every_steps = 100
  return config
