"""`vidjax finetune` (Gen-1 customization) on a tiny random model: LoRA, the new token, resume, bad inputs.

One tiny base checkpoint and one 4-step LoRA run (module fixtures) serve every test; a crashed-and-relaunched
run must end equal to it (it reuses the run's compiled step: `finetune._compiled`). Steps 0, 1, 3 are image
batches and step 2 a video batch of the prior data (seed 0, video_fraction 0.4), so both paths train and the
kill at step 3 resumes across the video step. Bad inputs fail on the manifest, images or token, before any
weights load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import tiny_model_dir
from vidjax import cli, diffusion, toyworld, tree
from vidjax.conditioning.tokens import Tokenizer
from vidjax.errors import EXIT_ERROR, ConfigError, InputError
from vidjax.pipelines import finetune
from vidjax.pipelines.model_dir import load_lora, load_model_dir
from vidjax.train import lora

BROWN = (0.55, 0.30, 0.10)
SETTINGS = finetune.FinetuneSettings(token="sks", num_steps=4, batch_size=2, lr=1e-2, token_lr=5e-2, warmup_steps=0,
                                     prior_data="toy", video_fraction=0.4, min_images=3, checkpoint_every=2,
                                     lora_rank=3, lora_alpha=3.0, guidance_scale=2.5)


def _subject(folder, n=5, size=tiny_model_dir.SIZE):
  os.makedirs(folder, exist_ok=True)
  for i in range(n):
    clip = toyworld.render_clip(0, 1, size, size, scene=toyworld.paint(toyworld.sample_scene(3_000_000 + i), "sks", BROWN))
    Image.fromarray(clip.rgb[0]).save(os.path.join(folder, f"{i}.png"))
    np.save(os.path.join(folder, f"{i}.depth.npy"), clip.disparity[0])
  return str(folder)


def _digest(folder) -> dict[str, str]:
  return {name: hashlib.sha256(open(os.path.join(root, name), "rb").read()).hexdigest()
          for root, _, names in os.walk(folder) for name in names}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
  """The tiny random base checkpoint and the subject folder every test shares."""
  root = tmp_path_factory.mktemp("finetune")
  return root, tiny_model_dir.write(root / "base"), _subject(root / "images")


@pytest.fixture(scope="module")
def run(shared):
  root, base, images = shared
  before = _digest(base)
  result = finetune.finetune(SETTINGS, base, images, root / "out", print_fn=lambda line: None)
  return {"root": root, "base": base, "images": images, "out": str(root / "out"), "result": result,
          "base_digest_before": before}


@pytest.fixture(scope="module")
def base_model(run):
  """The base checkpoint, loaded once (after the run, which must leave it unchanged)."""
  return load_model_dir(run["base"])


@pytest.fixture(scope="module")
def loaded(run):
  """The LoRA output through the normal loader: base + LoRA + the grown token table."""
  return load_model_dir(run["out"])


_PREDICT = {}  # model config -> the jitted prediction (one compile per vocabulary size, not one eager run per call)


def _unet_output(model, params, tokens, seed=0):
  """The UNet's prediction for fixed noisy latents, depth and the given prompt ids: (1, 1, h, w, C)."""
  rng = np.random.default_rng(seed)
  size = tiny_model_dir.SIZE // 2
  z = jnp.asarray(rng.standard_normal((1, 1, size, size, 4)), jnp.float32)
  structure = jnp.asarray(rng.random((1, 1, size, size, 1)), jnp.float32)

  def predict(params, tokens, z, structure):
    context = model.encode_content(params, tokens=tokens)
    return model.unet.apply({"params": params["unet"]}, z, jnp.array([500]), context, structure, image_mode=True)

  fn = _PREDICT.setdefault(model.config, jax.jit(predict))
  return fn(params, jnp.asarray(tokens), z, structure)


def test_lora_leaves_the_base_bitwise_unchanged_and_its_file_is_small(run, base_model):
  assert _digest(run["base"]) == run["base_digest_before"]
  files = sorted(os.listdir(run["out"]))
  assert files == ["finetune.json", "lora.safetensors", "token_embedding.safetensors", "tokenizer"]
  adapters, alpha = lora.load(os.path.join(run["out"], "lora.safetensors"))
  assert alpha == 3.0 and adapters and all("/attn" in path and "temporal" not in path for path in adapters)
  numbers = sum(v.size for ab in adapters.values() for v in ab.values())
  unet_numbers = sum(v.size for v in tree.flatten(base_model.params["unet"]).values())
  assert numbers < unet_numbers / 5  # rank 3 on 16-wide kernels: the adapters only, not the UNet
  # float16 adapters plus the header naming each kernel path: a fraction of the base UNet's file
  size = os.path.getsize(os.path.join(run["out"], "lora.safetensors"))
  assert 2 * numbers < size < 4 * numbers + 64 * len(adapters) + 4096  # float16: 2 bytes a number, not 4
  assert size < os.path.getsize(os.path.join(run["base"], "unet.safetensors")) / 2


def test_lora_loaded_onto_the_base_is_the_model_as_trained(run, base_model, loaded):
  by_hand = load_lora(base_model.params, run["out"])
  trained = run["result"]
  tokens = loaded.tokenizer(["a sks cube on a plain floor at night"])
  out = _unet_output(loaded.model, loaded.params, tokens)
  np.testing.assert_allclose(out, _unet_output(trained.model, trained.params, tokens), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out, _unet_output(loaded.model, by_hand, tokens))
  base = base_model
  base_out = _unet_output(base.model, base.params, base.tokenizer(["a sks cube on a plain floor at night"]))
  assert np.abs(out - base_out).max() > 1e-3  # and it is not the base


def test_the_output_recommends_the_finetunes_guidance_and_keeps_the_bases_other_defaults(base_model, loaded):
  assert base_model.sampling_defaults["guidance_scale"] != 2.5
  assert loaded.sampling_defaults == {**base_model.sampling_defaults, "guidance_scale": 2.5}


def test_the_token_gets_its_own_id_and_a_trained_embedding_row(run, base_model, loaded):
  base = base_model
  vocab = base.params["text_encoder"]["embeddings"]["token_embedding"]["embedding"].shape[0]
  ids = Tokenizer(os.path.join(run["out"], "tokenizer"), 24)(["a sks cube"])[0]
  assert ids[2] == vocab == run["result"].manifest["token_id"]  # <bos> a sks: a new id, not <unk> (3)
  assert base.tokenizer(["a sks cube"])[0][2] == 3  # the base reads it as <unk>
  table = np.asarray(run["result"].params["text_encoder"]["embeddings"]["token_embedding"]["embedding"])
  written = loaded.params["text_encoder"]["embeddings"]["token_embedding"]["embedding"]
  np.testing.assert_array_equal(np.asarray(written), table)  # the file holds the trained table
  base_table = np.asarray(base.params["text_encoder"]["embeddings"]["token_embedding"]["embedding"], np.float32)
  assert table.shape == (vocab + 1, base_table.shape[1])
  np.testing.assert_array_equal(table[:vocab], base_table)  # the vocabulary's rows are frozen
  init = base_table.mean(axis=0)  # FinetuneSettings.init_word '' starts the row at the mean
  assert np.abs(table[vocab] - init).max() > 1e-3  # ... and training moved it


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="not yet: the tiny run barely moves the subject loss (6 steps: 1.0204 -> "
                   "1.0199, < 0.1 %), as weak as the toy figure (18-21 % of objects in the concept colour); see README")
def test_finetuning_moves_the_denoiser_toward_the_subject(run):
  """The v-prediction loss on the subject images, prompted with the token, falls below the base's.

  Slow (35 s: eager losses of two models) and a strict xfail: the customization does not work yet. Measured
  on the toy world (benchmarks/finetune_toy.py, brown, 20 images, 400 steps, 33 held-out objects): base 0 %,
  LoRA 18.2 %, full 21.2 % of the objects in the new colour with captions "a sks" and the mean row; LoRA
  63.6 % with the scenes' captions naming the token and the row started as 'orange'; at rank 32 and token lr
  1e-2 (the defaults since) 61.7 % on 60 validation scenes (78.9 % on 20 was noise), 60.6 % on the
  benchmark (README); target >= 70 %.
  """
  base, trained = load_model_dir(run["base"]), run["result"]
  subject = finetune.read_subject_images(run["images"], (tiny_model_dir.SIZE,) * 2, SETTINGS)
  frames = jnp.asarray(subject.images[:, None], jnp.float32) / 127.5 - 1
  depth = jnp.asarray(subject.depth[:, None, ..., None])

  def loss(model, params, tokens):
    latents = model.encode_frames(params, frames, jax.random.key(1))
    structure = model.encode_structure(params, depth, jnp.zeros(len(frames)), latents.shape[2:4])
    context = model.encode_content(params, tokens=jnp.asarray(tokens))
    predict = lambda z, t: model.unet.apply({"params": params["unet"]}, z, t, context, structure, image_mode=True)
    keys = jax.random.split(jax.random.key(2), 8)
    return np.mean([float(diffusion.diffusion_loss(predict, latents, k, model.schedule,
                                                   prediction_type="v_prediction")[0]) for k in keys])

  prompt = ["a sks"] * len(frames)
  tuned = loss(trained.model, trained.params, Tokenizer(os.path.join(run["out"], "tokenizer"), 24)(prompt))
  assert tuned < 0.9 * loss(base.model, base.params, base.tokenizer(prompt))


def test_a_killed_run_relaunched_ends_equal_to_a_straight_one(run, monkeypatch):
  out, workdir = run["root"] / "resumed", run["root"] / "resumed.work"
  real = finetune.Batches.__call__

  def killed_at_step_3(self, step):
    if step == 3:
      raise KeyboardInterrupt("killed")
    return real(self, step)

  with monkeypatch.context() as patch:
    patch.setattr(finetune.Batches, "__call__", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
      finetune.finetune(SETTINGS, run["base"], run["images"], out, workdir=workdir, print_fn=lambda line: None)
  assert not out.exists() and "2" in os.listdir(workdir / "checkpoints") and "4" not in os.listdir(workdir / "checkpoints")
  lines = []
  finetune.finetune(SETTINGS, run["base"], run["images"], out, workdir=workdir, print_fn=lines.append)
  assert any("resumed from step 2" in line for line in lines) and not workdir.exists()
  straight, resumed = lora.load(os.path.join(run["out"], "lora.safetensors"))[0], lora.load(out / "lora.safetensors")[0]
  for path in straight:
    for name in ("lora_a", "lora_b"):
      np.testing.assert_array_equal(straight[path][name], resumed[path][name])
  assert _digest(out / "tokenizer") == _digest(os.path.join(run["out"], "tokenizer"))


def _bad_images(root, problem):
  folder = _subject(root / problem, n=3)
  if problem == "too_few":
    os.remove(os.path.join(folder, "2.png"))
    os.remove(os.path.join(folder, "2.depth.npy"))
  elif problem == "corrupt":
    open(os.path.join(folder, "1.png"), "wb").write(b"not a png")
  elif problem == "one_pixel":
    Image.new("RGB", (1, 1)).save(os.path.join(folder, "1.png"))
    os.remove(os.path.join(folder, "1.depth.npy"))
    np.save(os.path.join(folder, "1.depth.npy"), np.zeros((1, 1), np.float32))
  elif problem == "not_an_image":
    open(os.path.join(folder, "notes.pdf"), "w").write("%PDF")
  elif problem == "caption_without_token":
    open(os.path.join(folder, "0.txt"), "w").write("a red cube")
  return folder


@pytest.mark.parametrize("problem, error, named", [
    ("too_few", InputError, "fewer than the 3"), ("corrupt", InputError, "1.png: not a readable image"),
    ("one_pixel", InputError, "1.png: is 1x1 pixels"), ("not_an_image", InputError, "notes.pdf: is not an image"),
    ("caption_without_token", InputError, "0.txt: the caption"), ("missing_checkpoint", InputError, "does not exist"),
    ("missing_folder", InputError, "the images folder does not exist"),
    ("known_token", ConfigError, "'red' is already in the vocabulary")])
def test_bad_inputs_are_clear_errors_and_write_nothing(shared, tmp_path, problem, error, named, monkeypatch):
  images = str(tmp_path / "nowhere") if problem == "missing_folder" else _bad_images(tmp_path, problem)
  checkpoint = str(tmp_path / "no_model") if problem == "missing_checkpoint" else shared[1]
  # each is found before any weights are read: loading the model would fail this test
  monkeypatch.setattr(finetune, "load_model_dir", lambda path: pytest.fail(f"loaded {path} before the check"))
  settings = dataclasses.replace(SETTINGS, token="red" if problem == "known_token" else SETTINGS.token)
  before = set(os.listdir(tmp_path))
  with pytest.raises(error, match=named):
    finetune.finetune(settings, checkpoint, images, tmp_path / "out")
  assert set(os.listdir(tmp_path)) == before  # no output, no work folder


def test_the_cli_exits_2_on_bad_input_without_a_traceback(shared, tmp_path, capsys):
  images = _bad_images(tmp_path, "too_few")
  code = cli.main(["finetune", "--checkpoint", shared[1], "--images", images, "--token", "sks",
                   "--out", str(tmp_path / "out")])
  err = capsys.readouterr().err
  assert code == EXIT_ERROR and "holds 2 images, fewer than the 15 needed" in err and "Traceback" not in err
  assert not (tmp_path / "out").exists()
