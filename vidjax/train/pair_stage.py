"""The training loop of the stages that learn from (caption, clip) pairs: the CLIP, context and prior stages.

Each trains a small param tree on the training clips' caption tokens and frames before (or instead
of) the main stage, on one device, with the trainer's optimizer (AdamW after a linear warmup, then
cosine), checkpoints and progress line, so they resume like the main stage: a relaunch restores the
params, the optimizer, the RNG and the data iterator of the latest checkpoint, and ends bit-equal
to a run that never stopped.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import ml_collections

from vidjax.data.loader import Loader
from vidjax.parallel.sharding import unbox
from vidjax.train import state as state_lib
from vidjax.train.checkpoint import Checkpointer
from vidjax.train.logging import ProgressLine

# loss(params, constants, tokens (B, L), frames (B, T, H, W, 3) in [-1, 1], rng) -> (loss, metrics)
PairLoss = Callable[[Any, Any, jax.Array, jax.Array, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def train_pairs(config: ml_collections.ConfigDict, stage: ml_collections.ConfigDict, directory: str, *,
                init: Callable[[jax.Array], Any], loss: PairLoss, constants: Any = None, seed: int,
                desc: str, ema_decay: float | None = None) -> str:
  """Trains `init`'s params for `stage.num_steps` on config.data's clips; returns `directory` (its checkpoints).

  Args:
    stage: the stage's fields num_steps, batch_size, lr, warmup_steps, weight_decay.
    init: rng -> the param tree that trains (all of it).
    loss: the objective; `constants` (frozen params, e.g. CLIP towers) are its second argument.
    seed: the init key, config.seed + a per-stage offset (so stages draw apart).
    ema_decay: keep an EMA of the params at this decay (what `load_params(use_ema=True)` reads); None
      keeps none: the "EMA" is then the params themselves.
  """
  data = config.data.copy_and_resolve_references()
  data.image_fraction, data.use_latents, data.batch_size = 0.0, False, stage.batch_size
  train = ml_collections.ConfigDict(dict(config.train.to_dict(), lr=stage.lr, warmup_steps=stage.warmup_steps,
                                         num_steps=stage.num_steps, lr_schedule="cosine", grad_accum_steps=1,
                                         weight_decay=stage.weight_decay))
  labels = state_lib.trainable_labels(jax.eval_shape(init, jax.random.key(0)), (".*",))
  tx = state_lib.make_optimizer(train, labels)

  @jax.jit
  def step_fn(state, constants, tokens, frames):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    (_, metrics), grads = jax.value_and_grad(loss, has_aux=True)(state.params, constants, tokens, frames, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = jax.tree_util.tree_map(lambda p, u: p + u, state.params, updates)
    ema = params if ema_decay is None else state_lib.update_ema(state.ema_params, params, ema_decay)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema), metrics

  checkpointer = Checkpointer(directory, keep=1, async_save=False)
  loader = Loader(data)
  create = lambda key: state_lib.create_state(init, tx, labels, key)
  if checkpointer.latest_step() is not None:
    state, data_state, _ = checkpointer.restore(jax.eval_shape(lambda key: unbox(create(key)), jax.random.key(0)))
    loader.set_state(data_state)
  else:
    state = jax.jit(lambda key: unbox(create(key)))(jax.random.key(seed))
  print(f"{desc}: {stage.num_steps} steps, {stage.batch_size} (caption, frame) pairs per step")
  progress = ProgressLine(stage.num_steps, clips_per_step=stage.batch_size, frames_per_clip=1,
                          every=config.log.every_steps, start_step=int(state.step), desc=desc)
  while int(state.step) < stage.num_steps:
    batch = next(loader)
    state, metrics = step_fn(state, constants, batch["tokens"], batch["frames"])
    progress.update(int(state.step), {k: float(v) for k, v in metrics.items()})
    if int(state.step) % config.checkpoint.every_steps == 0 or int(state.step) == stage.num_steps:
      checkpointer.save(int(state.step), state, data_state=loader.get_state(), config=config.to_dict())
  checkpointer.close()
  loader.close()
  return os.fspath(directory)
