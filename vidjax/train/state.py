"""TrainState, the optimizer, and initialising both straight into their shardings.

Which params train is decided by regex patterns over '/'-joined param paths ('unet/.*' trains the
whole UNet; Make-Your-Video trains 'unet/.*temporal_.*' only). Frozen params get `set_to_zero`
updates and no optimizer state, and XLA drops their weight gradients; they stay in `params` so that
one tree holds the model. EMA is kept for the trainable params only (`ema_params` is the subtree of
`params` at their paths): a frozen param's average is the param, so Make-Your-Video's frozen
spatial UNet (about 6 GiB at full size) is not copied.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from vidjax.errors import ConfigError
from vidjax.models import layers
from vidjax.tree import flatten, path_string, unflatten
from vidjax.parallel import sharding as sharding_lib


@flax.struct.dataclass
class TrainState:
  """Everything a training step changes. `rng` holds raw key data (uint32) so checkpoints can store it."""

  step: jax.Array  # () int32
  params: dict[str, Any]  # {'unet': ..., 'vae': ..., 'text_encoder': ...}
  opt_state: optax.OptState
  ema_params: dict[str, Any]  # the trainable params only: the subtree of `params` at their paths
  rng: jax.Array  # (2,) uint32 key data


def trainable_labels(params: Any, patterns: Sequence[str]) -> Any:
  """'train' for params whose path matches one of `patterns` (re.fullmatch), else 'freeze'."""
  compiled = [re.compile(p) for p in patterns]
  labels = jax.tree_util.tree_map_with_path(
      lambda path, _: "train" if any(c.fullmatch(path_string(path)) for c in compiled) else "freeze", params,
      is_leaf=lambda x: isinstance(x, nn.Partitioned))
  if "train" not in jax.tree_util.tree_leaves(labels):
    raise ConfigError("train.trainable", f"no param path matches {list(patterns)}",
                      "use patterns like 'unet/.*' or 'unet/.*temporal_.*' (paths are '/'-joined)")
  return labels


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup from lr / warmup_steps (step 0 already learns), then constant or cosine decay."""
  warmup_steps = max(config.warmup_steps, 1)
  warmup = optax.linear_schedule(config.lr / warmup_steps, config.lr, warmup_steps - 1)
  if config.lr_schedule == "constant":
    decay = optax.constant_schedule(config.lr)
  elif config.lr_schedule == "cosine":
    decay = optax.cosine_decay_schedule(config.lr, max(config.num_steps - config.warmup_steps, 1),
                                        alpha=config.end_lr_fraction)
  else:
    raise ConfigError("train.lr_schedule", f"unknown {config.lr_schedule!r}", "use 'cosine' or 'constant'")
  return optax.join_schedules([warmup, decay], [config.warmup_steps])


def make_optimizer(config: ml_collections.ConfigDict, labels: Any) -> optax.GradientTransformation:
  """AdamW with clipping on the trainable params, nothing on the frozen ones, optional accumulation."""
  trainable = optax.chain(
      optax.clip_by_global_norm(config.grad_clip) if config.grad_clip else optax.identity(),
      optax.adamw(learning_rate_schedule(config), b1=config.b1, b2=config.b2, eps=config.eps,
                  weight_decay=config.weight_decay))
  tx = optax.multi_transform({"train": trainable, "freeze": optax.set_to_zero()}, labels)
  if config.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=config.grad_accum_steps)
  return tx


def trainable_subtree(tree: Mapping[str, Any], labels: Mapping[str, Any]) -> dict[str, Any]:
  """The leaves of `tree` (params, or anything of their structure) whose label is 'train', as a nested dict."""
  train = {path for path, label in flatten(labels).items() if label == "train"}
  return unflatten({path: leaf for path, leaf in flatten(tree).items() if path in train})


def ema_like(params: Mapping[str, Any], ema_params: Mapping[str, Any]) -> dict[str, Any]:
  """Copies of the leaves of `params` at the paths of `ema_params` (an EMA restarted from `params`)."""
  flat = flatten(params)
  return unflatten({path: jnp.copy(flat[path]) for path in flatten(ema_params)})


def with_ema(params: Mapping[str, Any], ema_params: Mapping[str, Any]) -> dict[str, Any]:
  """`params` with the EMA in place where there is one (frozen params are their own average)."""
  return unflatten({**flatten(params), **flatten(ema_params)})


def update_ema(ema_params: Mapping[str, Any], params: Mapping[str, Any], decay: float | jax.Array) -> dict[str, Any]:
  """One EMA step, decay * ema + (1 - decay) * param, on the paths `ema_params` holds."""
  flat = flatten(params)
  return unflatten({path: decay * e + (1 - decay) * flat[path] for path, e in flatten(ema_params).items()})


def create_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                 labels: Mapping[str, Any], rng: jax.Array) -> TrainState:
  """A fresh TrainState from an init function (boxed params keep their logical names); EMA over the
  params `labels` marks 'train'."""
  init_key, state_key = jax.random.split(rng)
  return state_from_params(init_params(layers.init_key(init_key)), tx, labels, state_key)


def state_from_params(params: Any, tx: optax.GradientTransformation, labels: Mapping[str, Any],
                      state_key: jax.Array) -> TrainState:
  """A step-0 TrainState around `params` (boxed or not; abstract ones give the abstract state without
  tracing the model's init again)."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    ema_params=trainable_subtree(params, labels), rng=jax.random.key_data(state_key))


def sharded_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                  labels: Mapping[str, Any], rng: jax.Array, mesh: jax.sharding.Mesh,
                  rules: Sequence[tuple[str, Any]]) -> tuple[TrainState, Any]:
  """Initialises the TrainState directly into its shardings; returns (state, shardings).

  Shapes come from `jax.eval_shape` (nothing allocated), shardings from the logical names (optimizer
  moments inherit their param's names), then one jit materialises each device's shards only.
  """
  create = lambda key: create_state(init_params, tx, labels, key)
  shardings = state_shardings(jax.eval_shape(create, rng), mesh, rules)
  state = jax.jit(lambda key: sharding_lib.unbox(create(key)), out_shardings=shardings)(rng)
  return state, shardings


def state_shardings(abstract_boxed_state: TrainState, mesh: jax.sharding.Mesh, rules) -> Any:
  return sharding_lib.param_shardings(abstract_boxed_state, mesh, rules)
