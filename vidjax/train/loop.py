"""`train_and_evaluate(config, workdir)`: the training loop around the jitted step.

Relaunching with the same workdir resumes from the newest finished checkpoint (params, optimizer,
EMA, step, RNG and the data iterator), so a killed job loses at most `checkpoint.every_steps` steps
and then continues on exactly the batches it would have seen. SIGTERM (preemption) saves and exits
0. `init_from` loads weights only. Only process 0 writes logs.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vidjax import tree
from vidjax.data.loader import Loader, check_image_buckets
from vidjax.errors import ConfigError
from vidjax.models import flops
from vidjax.models.build import build_model, size_multiple
from vidjax.parallel import mesh as mesh_lib
from vidjax.parallel import sharding as sharding_lib
from vidjax.sampling import generate
from vidjax.train import state as state_lib
from vidjax.train import surgery
from vidjax.train.checkpoint import Checkpointer
from vidjax.train.logging import MetricWriter, ProgressLine, model_flops_utilization
from vidjax.train.step import make_train_step


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between steps."""

  def __init__(self):
    self.requested = False
    signal.signal(signal.SIGTERM, lambda *_: setattr(self, "requested", True))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       on_log: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
  """Trains to config.train.num_steps (or until preempted); returns the final smoothed metrics.

  on_log(step, values): called on process 0 with the scalars written to TensorBoard every
  `log.every_steps` steps (loss, grad_norm, learning_rate, ...), e.g. to draw a live plot in a notebook.
  """
  if config.model.content == "text" and not config.data.tokenizer_dir:
    raise ConfigError("data.tokenizer_dir", "is empty but the model's content is caption text",
                      "set --config.data.tokenizer_dir=<tokenizer folder>, or train on content='image'")
  mesh_lib.maybe_initialize_distributed()
  devices = jax.devices()[:config.mesh.num_devices] if config.mesh.num_devices else None
  mesh = mesh_lib.make_mesh(config.mesh.shape.to_dict(), devices)
  rules = tuple(config.mesh.rules)
  check_data_fits_model(config)
  model = build_model(config)
  rng = jax.random.key(config.seed)
  abstract_params = jax.eval_shape(model.init, rng)
  labels = state_lib.trainable_labels(abstract_params, config.train.trainable)
  tx = state_lib.make_optimizer(config.train, labels)
  create = lambda key: state_lib.create_state(model.init, tx, labels, key)
  # From the abstract params: a second eval_shape of `create` would trace the model's init again (~2 s).
  abstract_state = jax.eval_shape(lambda p: state_lib.state_from_params(p, tx, labels, rng), abstract_params)
  shardings = state_lib.state_shardings(abstract_state, mesh, rules)

  loader = Loader(config.data)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
                              async_save=config.checkpoint.async_save)
  if checkpointer.latest_step() is not None:
    target = jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                    sharding_lib.unbox(abstract_state), shardings)
    state, data_state, _ = checkpointer.restore(target)
    loader.set_state(data_state)
    print(f"resumed from step {int(state.step)} in {workdir}")
  else:
    source = _init_source(config, abstract_params) if config.init_from else {}
    copied = set(tree.flatten(source)) & set(tree.flatten(sharding_lib.unbox(abstract_params)))
    state = jax.jit(lambda key: _zero_params(sharding_lib.unbox(create(key)), copied), out_shardings=shardings)(rng)
    if config.init_from:
      params = _init_from(config, state.params, shardings.params, source)
      state = state.replace(params=params, ema_params=state_lib.ema_like(params, state.ema_params))  # own buffers

  step_fn = jax.jit(make_train_step(model, tx, labels, config.train),
                    in_shardings=(shardings, sharding_lib.batch_sharding(mesh)),
                    out_shardings=(shardings, None), donate_argnums=0, static_argnums=2)
  step = int(state.step)
  monitor = _Monitor(config, model, workdir, step, on_log)
  preemption = _Preemption()
  config_json = json.loads(config.to_json_best_effort())
  save = lambda force=False: checkpointer.save(step, state, data_state=loader.get_state(), config=config_json,
                                               force=force)
  with sharding_lib.activation_sharding(mesh, rules):
    while step < config.train.num_steps and not preemption.requested:
      local = next(loader)
      image_mode = bool(local.pop("is_image"))
      state, metrics = step_fn(state, sharding_lib.global_batch(local, mesh), image_mode)
      if config.log.data_trace:
        _trace_batch(workdir, step, local)
      monitor.after_dispatch(step, metrics, local, image_mode, checkpointer, state.params)  # reads the previous step
      step += 1
      if config.log.sample_every_steps and step % config.log.sample_every_steps == 0 and monitor.sample_conditioning:
        video = sample_summary(model, state_lib.with_ema(state.params, state.ema_params), monitor.sample_conditioning,
                               num_inference_steps=config.log.sample_num_inference_steps, seed=step)
        monitor.writer.video(step, "samples/ema", video[0])
      if step % config.checkpoint.every_steps == 0 or step == config.train.num_steps:
        monitor.flush(checkpointer)
        save()
    monitor.flush(checkpointer)
    if preemption.requested:
      save(force=True)
      print(f"preempted: saved step {step} in {workdir}")
  checkpointer.wait_until_finished()
  checkpointer.close()
  monitor.writer.close()
  loader.close()
  return {"step": step, "first_smoothed_loss": monitor.progress.first_smoothed,
          "last_smoothed_loss": monitor.progress.last_smoothed}


def check_data_fits_model(config: ml_collections.ConfigDict) -> None:
  """ConfigError when data.image_buckets holds sizes the model cannot take. Here, where the model meets
  the data: the loader alone does not know the model's size multiple. `main.run` calls it before any stage."""
  check_image_buckets(config.data.image_buckets, size_multiple(config))


class _Monitor:
  """Reads each step's metrics one step late (the device keeps working), checks them, logs them."""

  def __init__(self, config, model, workdir, start_step, on_log):
    self.config, self.model, self.on_log = config, model, on_log
    data = config.data
    self.writer = MetricWriter(os.path.join(workdir, "logs"))
    self.progress = ProgressLine(config.train.num_steps, clips_per_step=data.batch_size * jax.process_count(),
                                 frames_per_clip=config.data.get("build", {}).get("num_frames", 1),
                                 every=config.log.every_steps, start_step=start_step)
    self.schedule = state_lib.learning_rate_schedule(config.train)
    self.pending = None
    self.sample_conditioning = None
    self.window_start, self.window_flops = time.perf_counter(), 0.0

  def after_dispatch(self, step, metrics, local, image_mode, checkpointer, params):
    # A video batch's first clip; an image batch's first frame when the run sees only images (Gen-1 stage 1).
    if self.sample_conditioning is None and (not image_mode or self.config.data.image_fraction >= 1):
      self.sample_conditioning = sample_conditioning(local, self.model, params)
    self.flush(checkpointer)
    self.pending = (step, metrics, _batch_shape(local), image_mode)

  def flush(self, checkpointer):
    """Handles the pending step's metrics (blocks until that step is done)."""
    if self.pending is None:
      return
    step, metrics, (clips, frames, height, width, context), image_mode = self.pending
    self.pending = None
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if self.config.train.nonfinite == "stop" and not values["finite"]:
      checkpointer.wait_until_finished()
      raise ConfigError(f"training step {step + 1}", "the loss or the gradient is not finite (NaN or inf)",
                        f"the last good checkpoint (step {checkpointer.latest_step()}) is intact; lower "
                        "train.lr, check the data, or set train.nonfinite='skip'")
    factor = self.model.config.vae.downsample_factor
    self.window_flops += flops.unet_train_flops(self.model.config.unet, batch=clips, frames=frames,
                                                height=height // factor, width=width // factor,
                                                context_length=context, image_mode=image_mode)
    self.progress.update(step + 1, values, clips=clips, frames=clips * frames)
    if (step + 1) % self.config.log.every_steps == 0 or step + 1 == self.config.train.num_steps:
      now = time.perf_counter()
      values["learning_rate"] = float(self.schedule(step // self.config.train.grad_accum_steps))
      if self.config.log.peak_tflops_per_device:
        values.update(model_flops_utilization(self.window_flops, now - self.window_start,
                                              self.config.log.peak_tflops_per_device * 1e12, jax.device_count()))
      else:
        values["model_tflops"] = self.window_flops / (now - self.window_start) / 1e12
      self.writer.scalars(step + 1, values)
      if self.on_log is not None and jax.process_index() == 0:
        self.on_log(step + 1, values)
      self.window_start, self.window_flops = now, 0.0


def _trace_batch(workdir: str, step: int, local) -> None:
  """Appends this process's batch fingerprint for `step` (a resumed run re-appends the steps it redoes)."""
  digest = hashlib.sha256(b"".join(np.ascontiguousarray(local[k]).tobytes() for k in sorted(local))).hexdigest()
  with open(os.path.join(workdir, f"data_trace.process{jax.process_index()}.jsonl"), "a") as f:
    f.write(json.dumps({"step": step, "sha256": digest[:16]}) + "\n")


def _batch_shape(local) -> tuple[int, int, int, int, int]:
  """(global clips, frames per clip, frame height, frame width, context length) of a local batch."""
  video = local["frames"] if "frames" in local else local["latents"]
  context = local["tokens"].shape[1] if "tokens" in local else 1
  return video.shape[0] * jax.process_count(), video.shape[1], video.shape[2], video.shape[3], context


def _init_source(config: ml_collections.ConfigDict, params: Mapping[str, Any]) -> dict[str, Any]:
  """`config.init_from`'s weights for the components in `params`, after `config.init_surgery`, without
  the params `config.init_exclude` names: what `_init_from` copies in."""
  source = {name: p for name, p in surgery.load_weights(config.init_from).items() if name in params}
  for operation in config.init_surgery:
    unet = config.model.unet
    if operation == "widen_input_channels":
      source["unet"] = surgery.widen_input_channels(source["unet"], unet.in_channels)
    elif operation == "replace_structure_channels":
      source["unet"] = surgery.replace_structure_channels(source["unet"], unet.in_channels,
                                                          config.model.vae.latent_channels)
    elif operation == "change_context_width":
      source["unet"] = surgery.change_context_width(source["unet"], unet.cross_attention_dim,
                                                    jax.random.key(config.seed + 2))
    else:
      raise ConfigError("init_surgery", f"unknown operation {operation!r}",
                        "use 'widen_input_channels' or 'replace_structure_channels', and/or "
                        "'change_context_width'")
  return surgery.drop_excluded(source, tuple(config.init_exclude))


def _zero_params(state: state_lib.TrainState, paths: set[tuple[str, ...]]) -> state_lib.TrainState:
  """`state` with zeros at `paths` in its params and EMA: inside the init's jit, XLA then drops those
  params' initializers, which `_init_from` overwrites anyway. Compiling an init costs per param: the
  main job's first run (538 of its 792 params copied) went 54 s -> 44 s from a cold compilation cache."""
  zero = lambda params: jax.tree_util.tree_map_with_path(
      lambda path, v: jnp.zeros_like(v) if tuple(k.key for k in path) in paths else v, params)
  return state.replace(params=zero(state.params), ema_params=zero(state.ema_params))


def _init_from(config: ml_collections.ConfigDict, params: dict[str, Any], shardings: Any,
               source: dict[str, Any] | None = None) -> dict[str, Any]:
  """Weights only, merged by path into the fresh params (layers the source lacks keep their init).

  `config.init_from` is one or more comma-separated sources (`surgery.load_weights`: pretrained
  directories, training workdirs; later components replace earlier ones); params matching
  `config.init_exclude` keep their init (fresh temporal layers); `config.init_surgery`
  adapts them first: 'widen_input_channels' (new structure channels, zero weights) or
  'replace_structure_channels' (another structure kind: the latent's weights kept, the structure's
  zero), and/or 'change_context_width' (a new content width).

  `source` is `_init_source(config, params)`, read here when not given.
  """
  source = _init_source(config, params) if source is None else source
  target = jax.device_get(params)
  merged, report = surgery.merge_params(target, source)
  print(f"init_from {config.init_from}: {report}")
  return jax.device_put(merged, shardings)


def sample_conditioning(batch: dict[str, Any], model=None, params=None) -> dict[str, Any]:
  """The sample summaries' fixed conditioning: the first clip of a batch, as the loader gave it.

  The depth comes blurred by the clip's t_s, so its `structure_fidelity` comes too: a 'depth_latent'
  model reads t_s as channels, and must see the value the depth was blurred with. An image-content
  model (Gen-1) gets the CLIP image embedding (1, D) of the clip's first frame from its frozen image
  encoder (`model.embed_frames`, as the train step embeds a batch), when the batch carries none:
  loader batches never do.
  """
  conditioning = {k: batch[k][:1] for k in ("depth", "structure_fidelity", "tokens", "image_embeds") if k in batch}
  if (model is not None and model.config.content == "image" and "image_embeds" not in conditioning
      and "frames" in batch):
    # One frame, so embed_frames' random frame choice has nothing to choose: the key does not matter.
    embeds = model.embed_frames(params, np.asarray(batch["frames"][:1, :1]), jax.random.key(0))
    conditioning["image_embeds"] = np.asarray(jax.device_get(embeds))
  return conditioning


def sample_summary(model, params, conditioning: dict[str, Any], *, num_inference_steps: int, seed: int) -> np.ndarray:
  """A video of the sample summaries on fixed conditioning, through the one sampling path.

  Args:
    params: the model's params (EMA ones during training).
    conditioning: 'depth' (B, T, H, W, 1) as the loader gives it (after its t_s blur), its
      'structure_fidelity' (B,) (default 0), and 'tokens' (B, L) or 'image_embeds' (B, D).
  Returns:
    uint8 (B, T, H, W, 3).
  """
  content = {k: conditioning[k] for k in ("tokens", "image_embeds") if k in conditioning}
  return generate.generate(model, params, conditioning["depth"], seed=seed, num_inference_steps=num_inference_steps,
                           structure_fidelity=conditioning.get("structure_fidelity"), **content)
