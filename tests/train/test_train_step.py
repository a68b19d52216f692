"""The pure train step: sharded equals single-device, Make-Your-Video's frozen spatial layers, surgery."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_config
from vidjax import toyworld
from vidjax.convert import common
from vidjax.errors import InputError
from vidjax.models import layers
from vidjax.parallel import make_mesh, unbox
from vidjax.parallel import sharding as sharding_lib
from vidjax.train import loop, surgery
from vidjax.train import state as state_lib
from vidjax.train.step import make_train_step


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  folder = tmp_path_factory.mktemp("tokenizer")
  toyworld.save_tokenizer(folder)
  return str(folder)


def _setup(tokenizer_dir, **overrides):
  # The random batches below carry no object masks.
  config = tiny_config.tiny_config(**{"data.tokenizer_dir": tokenizer_dir, "train.object_loss_weight": 0.0,
                                      **overrides})
  model = loop.build_model(config)
  rng = jax.random.key(0)
  labels = state_lib.trainable_labels(jax.eval_shape(model.init, rng), config.train.trainable)
  tx = state_lib.make_optimizer(config.train, labels)
  step = make_train_step(model, tx, labels, config.train)
  return config, model, labels, tx, step


def _batch(model, batch=8, frames=4, size=16, seed=0):
  rng = np.random.default_rng(seed)
  return {"frames": rng.uniform(-1, 1, (batch, frames, size, size, 3)).astype(np.float32),
          "depth": rng.uniform(-1, 1, (batch, frames, size, size, 1)).astype(np.float32),
          "structure_fidelity": np.zeros((batch,), np.int32),
          "tokens": _tokens(model, batch, rng)}


def _tokens(model, batch, rng):
  """The empty prompt's ids with a random word id in the first content position, (batch, L) int32."""
  null = np.asarray(model.config.null_tokens, np.int32)
  tokens = np.tile(null, (batch, 1))
  tokens[:, 1] = rng.integers(5, model.config.text_encoder.vocab_size, batch)
  return tokens


def _run_on(mesh, setup, batch, initial=None):
  """One jitted step on `mesh`; returns (the state it started from, on the host; the new state; metrics).

  The state is initialised straight into its shardings (`sharded_state`), or is `initial` placed
  into them: a second mesh starts from the same numbers without compiling the init again.
  """
  config, model, labels, tx, step = setup
  if initial is None:
    state, shardings = state_lib.sharded_state(model.init, tx, labels, jax.random.key(0), mesh, config.mesh.rules)
    initial = jax.device_get(state)  # the step donates the state
  else:
    create = lambda key: state_lib.create_state(model.init, tx, labels, key)
    shardings = state_lib.state_shardings(jax.eval_shape(create, jax.random.key(0)), mesh, config.mesh.rules)
    state = jax.device_put(initial, shardings)
  fn = jax.jit(step, in_shardings=(shardings, sharding_lib.batch_sharding(mesh)), out_shardings=(shardings, None),
               donate_argnums=0, static_argnums=2)
  with sharding_lib.activation_sharding(mesh, config.mesh.rules):
    new_state, metrics = fn(state, sharding_lib.global_batch(batch, mesh), False)
  return initial, new_state, metrics


def test_sharded_step_equals_single_device_and_really_shards(tokenizer_dir):
  # Some params have gradients at rounding-noise level (~1e-11: biases of zero-initialised temporal
  # projections, whose per-channel constant the next GroupNorm removes). Adam's g / (|g| + eps) turns
  # that noise, which differs with the reduction order on 8 devices, into different updates; a
  # larger eps keeps such updates linear in g, so the comparison tests sharding, not Adam.
  # The loop tests' model (no temporal attention) halves the state's arrays and so the two compiles;
  # temporal attention's sharded forward has its own test (tests/parallel/test_sharding.py).
  setup = _setup(tokenizer_dir, **{"train.eps": 1e-3, **tiny_config.LOOP_MODEL})
  batch = _batch(setup[1])
  initial, sharded, metrics8 = _run_on(make_mesh({"data": 4, "fsdp": 2}), setup, batch)
  _, single, metrics1 = _run_on(make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1]), setup, batch, initial)
  np.testing.assert_allclose(float(metrics8["loss"]), float(metrics1["loss"]), rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(sharded.params), jax.tree_util.tree_leaves(single.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  specs = [str(x.sharding.spec) for x in jax.tree_util.tree_leaves((sharded.params, sharded.opt_state))
           if hasattr(x, "sharding") and x.ndim]
  fsdp = [s for s in specs if "fsdp" in s]
  assert len(fsdp) > 50, specs[:10]
  kernel = sharded.params["unet"]["conv_in"]["kernel"]  # (3, 3, 5, 8): out channels over fsdp
  assert {s.data.shape for s in kernel.addressable_shards} == {(3, 3, 5, 4)}


def test_make_your_video_recipe_changes_only_temporal_params(tokenizer_dir):
  setup = _setup(tokenizer_dir, **{"train.trainable": ("unet/.*temporal_.*",)})
  initial, state, _ = _run_on(make_mesh({"data": 1}, jax.devices()[:1]), setup, _batch(setup[1]))
  flat_before, flat_after = common.flatten(initial.params), common.flatten(jax.device_get(state.params))
  temporal = [p for p in flat_after if any(part.startswith("temporal_") for part in p)]
  spatial = [p for p in flat_after if p not in temporal]
  assert temporal and spatial
  assert all(np.array_equal(flat_before[p], flat_after[p]) for p in spatial)
  assert any(not np.array_equal(flat_before[p], flat_after[p]) for p in temporal)
  # EMA over the trainable params only: no copy of the frozen spatial UNet, VAE or text tower.
  ema = common.flatten(jax.device_get(state.ema_params))
  assert sorted(ema) == sorted(p for p in temporal if p[0] == "unet")
  decay = setup[0].train.ema_decay
  moved = [p for p in ema if not np.array_equal(flat_before[p], flat_after[p])]
  assert moved and all(np.allclose(ema[p], decay * flat_before[p] + (1 - decay) * flat_after[p], atol=1e-7)
                       for p in moved)
  merged = common.flatten(state_lib.with_ema(jax.device_get(state.params), jax.device_get(state.ema_params)))
  assert merged.keys() == flat_after.keys()  # what summaries and exports sample with: EMA where there is one
  assert all(merged[p] is ema[p] or np.array_equal(merged[p], ema[p]) for p in ema)
  assert all(np.array_equal(merged[p], flat_after[p]) for p in spatial)


def test_surgery_adding_temporal_layers_and_input_channels_keeps_outputs(tokenizer_dir):
  config, model, *_ = _setup(tokenizer_dir)
  image_config = tiny_config.tiny_config(**{"data.tokenizer_dir": tokenizer_dir})
  image_config.model.unet.update(temporal_conv="none", temporal_attention=False, in_channels=4)
  image_config.model.structure = "none"
  image_model = loop.build_model(image_config)
  image_params = jax.tree_util.tree_map(lambda x: x + 0.01, unbox(
      jax.jit(image_model.init)(layers.init_key(jax.random.key(1)))))
  latents = jax.random.normal(jax.random.key(2), (2, 4, 8, 8, 4))
  t, context = jnp.array([10, 700]), jax.random.normal(jax.random.key(3), (2, 16, 16))
  reference = image_model.unet.apply({"params": image_params["unet"]}, latents, t, context, image_mode=True)

  video_params = unbox(jax.jit(model.init)(layers.init_key(jax.random.key(4))))
  merged, report = surgery.merge_params(video_params["unet"], surgery.widen_input_channels(image_params["unet"], 5))
  assert report.kept_init and all("temporal_" in p for p in report.kept_init) and not report.unused
  depth = jax.random.normal(jax.random.key(5), (2, 4, 8, 8, 1))  # any values: the new input weights are zero
  out = model.unet.apply({"params": merged}, latents, t, context, depth)
  np.testing.assert_allclose(np.asarray(out), np.asarray(reference), atol=1e-5)


def test_merged_params_take_the_models_dtype_from_a_float16_export():
  target = {"conv": {"kernel": np.zeros((3, 3, 2, 4), np.float32), "bias": np.ones((4,), np.float32)}}
  source = {"conv": {"kernel": np.full((3, 3, 2, 4), 0.1, np.float16)}}
  merged, report = surgery.merge_params(target, source)
  assert merged["conv"]["kernel"].dtype == np.float32 and report.copied == 1
  np.testing.assert_array_equal(merged["conv"]["kernel"], np.float32(np.float16(0.1)))
  np.testing.assert_array_equal(merged["conv"]["bias"], target["conv"]["bias"])  # not in the source: kept


def test_depth_pixels_give_each_latent_cell_its_own_pixels_after_the_coarse_depth(tokenizer_dir):
  # tiny_config's VAE has factor 2: 1 coarse + 4 pixel channels, and a 'depth' model widens to it.
  config, model, *_ = _setup(tokenizer_dir, **{"model.structure": "depth_pixels", "model.unet.in_channels": 9})
  coarse_config, coarse_model, *_ = _setup(tokenizer_dir)
  depth = np.random.default_rng(0).uniform(0, 1, (2, 3, 16, 16, 1)).astype(np.float32)
  fidelity = jnp.zeros((2,), jnp.int32)
  structure = np.asarray(model.encode_structure({}, depth, fidelity, (8, 8)))
  coarse = np.asarray(coarse_model.encode_structure({}, depth, fidelity, (8, 8)))
  assert structure.shape == (2, 3, 8, 8, 5)
  np.testing.assert_array_equal(structure[..., :1], coarse)
  per_frame = depth[..., 0].reshape(6, 256)
  low, high = per_frame.min(1)[:, None], per_frame.max(1)[:, None]
  normalized = (2 * (per_frame - low) / (high - low) - 1).reshape(2, 3, 16, 16)
  for dy in range(2):
    for dx in range(2):  # channel 1 + 2 dy + dx of cell (i, j) is pixel (2 i + dy, 2 j + dx)
      np.testing.assert_allclose(structure[..., 1 + 2 * dy + dx], normalized[:, :, dy::2, dx::2], atol=1e-5)

  params = unbox(jax.jit(coarse_model.init)(layers.init_key(jax.random.key(1))))
  params = jax.tree_util.tree_map(lambda x: x + 0.01, params)
  widened = {**params, "unet": surgery.widen_input_channels(params["unet"], 9)}
  latents = jax.random.normal(jax.random.key(2), (2, 3, 8, 8, 4))
  t, context = jnp.array([10, 700]), jax.random.normal(jax.random.key(3), (2, 16, 16))
  out = model.unet.apply({"params": widened["unet"]}, latents, t, context, structure)
  reference = coarse_model.unet.apply({"params": params["unet"]}, latents, t, context, coarse)
  np.testing.assert_allclose(np.asarray(out), np.asarray(reference), atol=1e-5)
  with pytest.raises(InputError, match="VAE factor 2"):
    model.encode_structure({}, depth[:, :, :15], fidelity, (8, 8))


def test_object_weights_follow_each_latent_cells_object_coverage():
  from vidjax.errors import ConfigError
  from vidjax.train.step import object_weights

  mask = np.zeros((1, 2, 4, 4, 1), np.float32)
  mask[:, :, :2, :2] = 1.0  # cell (0, 0) is all object
  mask[:, 1, 2, 2:] = 1.0  # cell (1, 1) of frame 1 is half object
  weights = np.asarray(object_weights({"object_mask": mask}, (2, 2), 3.0))
  assert weights.shape == (1, 2, 2, 2, 1)
  np.testing.assert_allclose(weights[0, 0, ..., 0], [[4.0, 1.0], [1.0, 1.0]])
  np.testing.assert_allclose(weights[0, 1, ..., 0], [[4.0, 1.0], [1.0, 2.5]])
  assert object_weights({}, (2, 2), 0.0) is None
  with pytest.raises(ConfigError, match="object_loss_weight.*with_masks"):
    object_weights({"frames": mask}, (2, 2), 3.0)


def test_an_object_margin_weighs_a_ring_of_pixels_around_each_object_like_the_object():
  from vidjax.train.step import object_weights

  mask = np.zeros((1, 1, 7, 7, 1), np.float32)
  mask[0, 0, 3, 3] = 1.0  # one object pixel in the middle
  mask[0, 0, 0, 6] = 1.0  # one in a corner: the dilation stops at the border
  weights = np.asarray(object_weights({"object_mask": mask}, (7, 7), 10.0, margin=1))[0, 0, ..., 0]
  expected = np.ones((7, 7))
  expected[2:5, 2:5] = 11.0
  expected[0:2, 5:7] = 11.0
  np.testing.assert_allclose(weights, expected)
  # One 7x7 cell: the coverage of the dilated mask (9 + 4 pixels of 49).
  np.testing.assert_allclose(object_weights({"object_mask": mask}, (1, 1), 10.0, margin=1)[0, 0, 0, 0, 0],
                             1.0 + 10.0 * 13 / 49, rtol=1e-6)


def test_vae_loss_pixel_weights_give_a_weighted_mean_of_the_l1_error():
  from vidjax.models.vae import AutoencoderKL, VAEConfig
  from vidjax.train.vae_stage import vae_loss

  vae = AutoencoderKL(VAEConfig(block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4))
  frames = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3), minval=-1, maxval=1)
  params = vae.init(jax.random.key(1), frames)["params"]
  inside = jnp.zeros((2, 8, 8, 1)).at[:, 2:5, 3:7].set(1.0)  # 24 of 128 pixels
  loss = lambda weights: float(vae_loss(vae, params, frames, jax.random.key(2), 0.0, weights)[0])
  # Same rng, same reconstruction: the weighted mean is a mix of the means inside and outside.
  mean_in, mean_out, unweighted = loss(inside), loss(1.0 - inside), loss(None)
  np.testing.assert_allclose(loss(jnp.ones_like(inside)), unweighted, rtol=1e-6)
  np.testing.assert_allclose(unweighted, (24 * mean_in + 104 * mean_out) / 128, rtol=1e-5)
  np.testing.assert_allclose(loss(1.0 + 9.0 * inside), (240 * mean_in + 104 * mean_out) / 344, rtol=1e-5)
