"""CLIP parity against transformers (the PyTorch oracle) on tiny seeded models saved to disk."""

from __future__ import annotations

import json
import string
import warnings

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from torch_oracle import perturb_, to_torch_nchw
from vidjax.convert import hf_clip
from vidjax.errors import ConfigError, InputError
from vidjax.models import clip

TOL = 1e-4
# Odd sizes so that a transposed or mis-split tensor cannot fit by accident.
TEXT = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3,
            max_position_embeddings=11, bos_token_id=48, eos_token_id=50, pad_token_id=1)
VISION = dict(hidden_size=28, intermediate_size=41, num_attention_heads=4, num_hidden_layers=2, image_size=30,
              patch_size=6)
# Row 0 holds ids above eos (an argmax rule would pool there), row 1 pads with eos (the first counts),
# row 2 is an empty prompt.
IDS = np.array([[48, 7, 90, 13, 50, 1, 1, 1, 1, 1, 1],
                [48, 60, 61, 62, 63, 64, 65, 66, 67, 50, 50],
                [48, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50]], np.int32)
# Legacy configs (eos_token_id == 2, as SD-2's text_encoder): the end token is the largest id, pads are 0.
LEGACY_IDS = np.array([[49, 7, 20, 98, 0, 0, 0], [49, 98, 0, 0, 0, 0, 0]], np.int32)


def _save(model: torch.nn.Module, folder, seed: int) -> torch.nn.Module:
  perturb_(model, seed=seed)
  model.save_pretrained(folder)
  return model


def _err(ours, theirs) -> float:
  return float(np.abs(np.asarray(ours) - theirs.detach().numpy()).max())


@pytest.fixture(scope="module")
def clip_model(tmp_path_factory):
  torch.manual_seed(0)
  config = transformers.CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=13)
  folder = tmp_path_factory.mktemp("clip")
  return folder, _save(transformers.CLIPModel(config), folder, seed=1)


def _check_text(ours: dict, model, ids: np.ndarray, projection) -> None:
  with torch.no_grad():
    theirs = model(torch.from_numpy(ids).long(), output_hidden_states=True)
    final_norm = model.final_layer_norm
    assert _err(ours["last_hidden_state"], theirs.last_hidden_state) <= TOL
    assert _err(ours["penultimate"], final_norm(theirs.hidden_states[-2])) <= TOL
    assert len(ours["hidden_states"]) == len(theirs.hidden_states)
    for ours_h, theirs_h in zip(ours["hidden_states"], theirs.hidden_states):
      assert _err(ours_h, theirs_h) <= TOL
    assert _err(ours["pooled"], theirs.pooler_output) <= TOL
    if projection is None:
      assert "text_embeds" not in ours
    else:
      assert _err(ours["text_embeds"], projection(theirs.pooler_output)) <= TOL


def _check_vision(ours: dict, model, pixels: np.ndarray, projection) -> None:
  with torch.no_grad():
    theirs = model(to_torch_nchw(pixels))
    assert _err(ours["last_hidden_state"], theirs.last_hidden_state) <= TOL
    assert _err(ours["pooled"], theirs.pooler_output) <= TOL
    assert _err(ours["image_embeds"], projection(theirs.pooler_output)) <= TOL


def test_clip_model_matches_transformers(clip_model):
  folder, model = clip_model
  config, params, report = hf_clip.load_clip(folder)
  assert report.unexpected == ["logit_scale"] and not report.missing
  assert config.text.projection_dim == config.vision.projection_dim == 13
  _check_text(clip.encode_text(config.text, params["text_model"], IDS), model.text_model, IDS, model.text_projection)
  pixels = np.random.default_rng(0).normal(size=(2, 30, 30, 3)).astype(np.float32)
  ours = clip.encode_image(config.vision, params["vision_model"], pixels)
  _check_vision(ours, model.vision_model, pixels, model.visual_projection)
  # transformers' own entry points agree with the towers used above.
  with torch.no_grad():
    features = model.get_image_features(to_torch_nchw(pixels)).pooler_output
  assert _err(ours["image_embeds"], features) <= TOL


def test_one_tower_of_a_clip_model(clip_model):
  config, params, _ = hf_clip.load_clip(clip_model[0], towers=("text",))
  assert config.vision is None and set(params) == {"text_model"}
  with pytest.raises(ConfigError, match="towers"):
    hf_clip.load_clip(clip_model[0], towers=("audio",))


@pytest.mark.parametrize("model_cls, hf_config, ids", [
    ("CLIPTextModel", dict(TEXT, hidden_act="gelu", eos_token_id=2, bos_token_id=49, pad_token_id=0), LEGACY_IDS),
    ("CLIPTextModelWithProjection", dict(TEXT, projection_dim=17), IDS),
])
def test_text_models_match_transformers(tmp_path, model_cls, hf_config, ids):
  torch.manual_seed(0)
  model = _save(getattr(transformers, model_cls)(transformers.CLIPTextConfig(**hf_config)), tmp_path, seed=2)
  config, params, report = hf_clip.load_clip(tmp_path)
  assert config.vision is None and not report.unexpected
  assert config.text.hidden_act == hf_config.get("hidden_act", "quick_gelu")
  ours = clip.encode_text(config.text, params["text_model"], ids)
  _check_text(ours, getattr(model, "text_model", model), ids, getattr(model, "text_projection", None))


def test_vision_model_with_projection_matches_transformers(tmp_path):
  torch.manual_seed(0)
  hf_config = transformers.CLIPVisionConfig(**VISION, projection_dim=19)
  model = _save(transformers.CLIPVisionModelWithProjection(hf_config), tmp_path, seed=3)
  config, params, _ = hf_clip.load_clip(tmp_path)
  pixels = np.random.default_rng(1).normal(size=(3, 30, 30, 3)).astype(np.float32)
  ours = clip.encode_image(config.vision, params["vision_model"], pixels)
  _check_vision(ours, model.vision_model, pixels, model.visual_projection)
  with pytest.raises(InputError, match="pixels"):
    clip.encode_image(config.vision, params["vision_model"], pixels[:, :24])


def test_legacy_torch_file_with_prefix_and_buffers(tmp_path):
  """SD-2's text_encoder layout: transformers-4 `text_model.` keys, position_ids saved, a .bin file."""
  torch.manual_seed(0)
  model = _save(transformers.CLIPTextModel(transformers.CLIPTextConfig(**TEXT)), tmp_path / "new", seed=4)
  state = {f"text_model.{k}": v.clone() for k, v in model.state_dict().items()}
  state["text_model.embeddings.position_ids"] = torch.arange(TEXT["max_position_embeddings"])[None]
  (tmp_path / "old").mkdir()
  torch.save(state, tmp_path / "old" / "pytorch_model.bin")
  (tmp_path / "old" / "config.json").write_text((tmp_path / "new" / "config.json").read_text())
  config, params, report = hf_clip.load_clip(tmp_path / "old")
  assert report.unexpected == ["text_model.embeddings.position_ids"]
  assert "text_model.embeddings.position_ids" not in report.converted
  _check_text(clip.encode_text(config.text, params["text_model"], IDS), model, IDS, None)


def _copy_folder(source, target, *, config_edit=None, weights: bytes | None = None):
  target.mkdir()
  hf = json.loads((source / "config.json").read_text())
  (target / "config.json").write_text(json.dumps(config_edit(hf) if config_edit else hf))
  if weights is not None:
    (target / "model.safetensors").write_bytes(weights)
  return target


def test_errors_name_the_problem(clip_model, tmp_path):
  folder, _ = clip_model
  weights = (folder / "model.safetensors").read_bytes()
  with pytest.raises(InputError, match="no weights file"):
    hf_clip.load_clip(_copy_folder(folder, tmp_path / "no_weights"))
  with pytest.raises(InputError, match="safetensors"):
    hf_clip.load_clip(_copy_folder(folder, tmp_path / "corrupt", weights=weights[: len(weights) // 2]))
  wider = lambda hf: {**hf, "text_config": {**hf["text_config"], "intermediate_size": 43}}
  with pytest.raises(ConfigError, match=r"shape mismatches: .*fc1"):
    hf_clip.load_clip(_copy_folder(folder, tmp_path / "shapes", config_edit=wider, weights=weights))
  with pytest.raises(ConfigError, match="model_type 'bert'"):
    hf_clip.load_clip(_copy_folder(folder, tmp_path / "bert", config_edit=lambda hf: {**hf, "model_type": "bert"}))
  state = load_file(folder / "model.safetensors")
  del state["text_model.final_layer_norm.weight"]
  save_file(state, tmp_path / "partial.safetensors")
  partial = _copy_folder(folder, tmp_path / "partial", weights=(tmp_path / "partial.safetensors").read_bytes())
  with pytest.raises(ConfigError, match="final_layer_norm/scale"):
    hf_clip.load_clip(partial)


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
  """A tiny CLIP BPE: letters, letters ending a word, a few merged words; '!' (id 0) pads as in SD-2."""
  folder = tmp_path_factory.mktemp("tokenizer")
  merges = ["c a", "ca t</w>", "d o", "do g</w>", "t h", "th e</w>", "r e", "re d</w>"]
  words = ["ca", "cat</w>", "do", "dog</w>", "th", "the</w>", "re", "red</w>"]
  letters = list(string.ascii_lowercase)
  tokens = ["!"] + letters + [c + "</w>" for c in letters] + words + ["<|startoftext|>", "<|endoftext|>"]
  (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
  (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
  (folder / "tokenizer_config.json").write_text(json.dumps({
      "model_max_length": 8, "tokenizer_class": "CLIPTokenizer", "pad_token": "!",
      "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
  return folder, {t: i for i, t in enumerate(tokens)}


def test_tokenizer_matches_transformers(tokenizer_folder):
  folder, vocab = tokenizer_folder
  ours = clip.ClipTokenizer.from_folder(folder)
  theirs = transformers.CLIPTokenizerFast.from_pretrained(folder, local_files_only=True)
  prompts = ["a red cat", "The  RED dog!", "xyz", "the cat"]
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # prompts within the context must not warn
    ids = ours(prompts)
  expected = theirs(prompts, padding="max_length", max_length=8, truncation=True)["input_ids"]
  np.testing.assert_array_equal(ids, expected)
  bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
  assert ids.dtype == np.int32 and ids[0].tolist() == [bos, vocab["a</w>"], vocab["red</w>"], vocab["cat</w>"], eos,
                                                        0, 0, 0]


def test_tokenizer_truncates_with_warning_and_empty_prompt_is_unconditional(tokenizer_folder):
  folder, vocab = tokenizer_folder
  ours = clip.ClipTokenizer.from_folder(folder)
  with pytest.warns(UserWarning, match="dropped: 'red dog cat'"):
    ids = ours("the red cat the dog the red dog cat")
  the, red, cat, dog = (vocab[w + "</w>"] for w in ("the", "red", "cat", "dog"))
  assert ids[0].tolist() == [vocab["<|startoftext|>"], the, red, cat, the, dog, the, vocab["<|endoftext|>"]]
  unconditional = [vocab["<|startoftext|>"], vocab["<|endoftext|>"]] + [0] * 6
  assert ours("")[0].tolist() == ours(["  "])[0].tolist() == unconditional
  assert clip.ClipTokenizer.from_folder(folder, context_length=5)("")[0].tolist() == unconditional[:5]
  with pytest.raises(InputError, match="not found"):
    clip.ClipTokenizer.from_folder(folder / "missing")
  (folder / "config_only").mkdir()
  (folder / "config_only" / "tokenizer_config.json").write_text((folder / "tokenizer_config.json").read_text())
  with pytest.raises(InputError, match="no BPE vocabulary"):
    clip.ClipTokenizer.from_folder(folder / "config_only")


def test_preprocess_images_matches_clip_image_processor():
  rng = np.random.default_rng(0)
  ramp = np.linspace(0, 255, 61)[None, :, None] * np.linspace(0.2, 1, 45)[:, None, None]
  frames = np.clip(ramp + rng.normal(scale=20, size=(2, 45, 61, 3)), 0, 255).astype(np.uint8)
  small = rng.integers(0, 256, size=(1, 20, 26, 3), dtype=np.uint8)
  processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
  for batch in (frames, frames.transpose(0, 2, 1, 3), small):  # wide, tall, upsampled
    ours = np.asarray(clip.preprocess_images(batch, 30))
    theirs = processor(list(batch), return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    assert ours.shape == theirs.shape == (len(batch), 30, 30, 3)
    grey_levels = np.abs(ours - theirs) * np.asarray(clip.CLIP_STD) * 255
    # Only PIL's fixed-point rounding ties may differ, by one level.
    assert grey_levels.max() <= 1.001 and (grey_levels > 0.01).mean() < 0.01
  with pytest.raises(InputError, match="uint8"):
    clip.preprocess_images(frames.astype(np.float32), 30)
