"""stable-diffusion-2-depth folder -> vidjax checkpoint: component parity, an end-to-end edit, errors.

A tiny random `StableDiffusionDepth2ImgPipeline` (every weight perturbed) is saved with
save_pretrained and converted through the CLI. The converted components are run on the inputs the
PyTorch ones see, and an SDEdit depth-to-image edit composed from our library pieces (tokenizer,
text encoder, DPT depth, VAE, `Sampler`) is compared with the pipeline's output frames.
"""

from __future__ import annotations

import functools
import json
import shutil
import string

import jax
import numpy as np
import PIL.Image
import pytest
import torch
import transformers
from diffusers import AutoencoderKL as TorchAutoencoderKL
from diffusers import DDIMScheduler, StableDiffusionDepth2ImgPipeline, UNet2DConditionModel
from safetensors.numpy import load_file, save_file

import torch_oracle
from vidjax import diffusion
from vidjax.convert import common, diffusers_unet, pretrained
from vidjax.convert.cli import main
from vidjax.errors import EXIT_ERROR
from vidjax.models import clip
from vidjax.models.depth import DPT, model_input_size, normalize_depth_for_unet, preprocess_frames
from vidjax.models.unet import VideoUNet
from vidjax.models.vae import AutoencoderKL, decode_video
from vidjax.sampling.sampler import Sampler, SamplingConfig

SD2_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                     set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading", prediction_type="epsilon")
TEXT = dict(hidden_size=20, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=8,
            hidden_act="gelu")
# DPT-Hybrid as SD-2-depth's depth_estimator, tiny (as tests/models/test_depth.py): 48-pixel images.
TINY_DPT = dict(hidden_size=36, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37,
                backbone_out_indices=[0, 1, 2, 3], fusion_hidden_size=16, image_size=48, patch_size=16, is_hybrid=True,
                neck_hidden_sizes=[16, 24, 16, 20], reassemble_factors=[1, 1, 1, 0.5],
                backbone_featmap_shape=[1, 32, 3, 3],
                backbone_config=dict(global_padding="same", layer_type="bottleneck", depths=[1, 2, 1],
                                     hidden_sizes=[16, 24, 32], embedding_size=8, num_groups=4,
                                     out_features=["stage1", "stage2", "stage3"], embedding_dynamic_padding=True))
SIZE = 48  # image side: the DPT input size (no resize), 24 x 24 latents through the factor-2 tiny VAE
TOL = 1e-4


def _tokenizer(folder) -> transformers.CLIPTokenizer:
  """A tiny CLIP BPE: letters, letters ending a word, a few merged words; '!' (id 0) pads as in SD-2."""
  merges = ["c a", "ca t</w>", "r e", "re d</w>", "d o", "do g</w>"]
  letters = list(string.ascii_lowercase)
  tokens = ["!", *letters, *(c + "</w>" for c in letters), "ca", "cat</w>", "re", "red</w>", "do", "dog</w>",
            "<|startoftext|>", "<|endoftext|>"]
  folder.mkdir()
  (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
  (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
  (folder / "tokenizer_config.json").write_text(json.dumps({
      "model_max_length": TEXT["max_position_embeddings"], "tokenizer_class": "CLIPTokenizer", "pad_token": "!",
      "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
  return transformers.CLIPTokenizer.from_pretrained(folder, local_files_only=True)


@pytest.fixture(scope="module")
def pipe_folder(tmp_path_factory):
  """(the PyTorch pipeline, its saved folder, the converted checkpoint directory)."""
  root = tmp_path_factory.mktemp("sd2")
  tokenizer = _tokenizer(root / "tok")
  torch.manual_seed(0)
  unet = torch_oracle.perturb_(UNet2DConditionModel(**dict(torch_oracle.TINY_UNET, cross_attention_dim=20)), 1, 0.05)
  vae = torch_oracle.perturb_(TorchAutoencoderKL(**torch_oracle.TINY_VAE), 2, 0.05)
  text = torch_oracle.perturb_(transformers.CLIPTextModel(transformers.CLIPTextConfig(
      vocab_size=len(tokenizer), bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1, pad_token_id=0,
      **TEXT)), 3, 0.1)
  depth = torch_oracle.perturb_(transformers.DPTForDepthEstimation(transformers.DPTConfig(**TINY_DPT)), 4, 0.1)
  with torch.no_grad():
    depth.head.head[4].bias.add_(1.0)  # keep the final ReLU mostly positive: a zero depth map proves nothing
  pipe = StableDiffusionDepth2ImgPipeline(
      vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=DDIMScheduler(**SD2_SCHEDULER),
      depth_estimator=depth, feature_extractor=transformers.DPTImageProcessor(
          size={"height": SIZE, "width": SIZE}, keep_aspect_ratio=False, ensure_multiple_of=1))
  pipe.set_progress_bar_config(disable=True)
  pipe.save_pretrained(root / "sd2-depth")
  assert main(["sd2-depth", str(root / "sd2-depth"), str(root / "out")]) == 0
  return pipe, root / "sd2-depth", root / "out"


@pytest.fixture(scope="module")
def loaded(pipe_folder):
  return pretrained.load_pretrained(pipe_folder[2])


def _err(ours, theirs: np.ndarray) -> float:
  return float(np.abs(np.asarray(ours) - theirs).max())


def test_manifest_records_scheduler_conditioning_and_assets(pipe_folder, loaded):
  manifest = pretrained.read_manifest(pipe_folder[2])
  assert {k: manifest["scheduler"][k] for k in SD2_SCHEDULER} == SD2_SCHEDULER
  assert manifest["conditioning"]["structure"] == "depth_1ch"
  assert manifest["conditioning"]["text_output"] == "last_hidden_state"
  assert manifest["depth_estimator_kwargs"] == {"image_size": SIZE, "multiple": 1, "keep_aspect_ratio": False}
  assert manifest["assets"] == ["feature_extractor", "tokenizer"] and set(loaded) == {
      "unet", "vae", "text_encoder", "depth_estimator"}


@pytest.fixture(scope="module")
def ours(pipe_folder, loaded):
  """Our components, each jitted once: the edit below reuses the component checks' compilations."""
  vae = AutoencoderKL(loaded["vae"][0])
  return dict(unet=jax.jit(VideoUNet(loaded["unet"][0]).apply), vae=vae,
              encode=jax.jit(functools.partial(vae.apply, method="encode")),
              dpt=jax.jit(DPT(loaded["depth_estimator"][0]).apply),
              tokenizer=clip.ClipTokenizer.from_folder(pipe_folder[2] / "tokenizer"))


def test_components_match_pytorch(pipe_folder, loaded, ours):
  pipe, rng, errors = pipe_folder[0], np.random.default_rng(0), {}
  # UNet: (B, T=1, h, w, 5) latents + depth; odd sizes that the stride-2 convs round up.
  latents = rng.standard_normal((2, 1, 13, 11, 5)).astype(np.float32)
  context = rng.standard_normal((2, 8, 20)).astype(np.float32)
  out = ours["unet"]({"params": loaded["unet"][1]}, latents, np.array([10, 900]), context)
  with torch.no_grad():
    ref = pipe.unet(torch_oracle.to_torch_nchw(latents[:, 0]), torch.tensor([10, 900]),
                    encoder_hidden_states=torch.from_numpy(context)).sample
  errors["unet"] = _err(out[:, 0], torch_oracle.from_torch_nchw(ref))
  # VAE: posterior moments, and decoding (through decode_video, which undoes the latent scaling).
  images = rng.uniform(-1, 1, (1, SIZE, SIZE, 3)).astype(np.float32)
  vae_params = loaded["vae"][1]
  mean, logvar = ours["encode"]({"params": vae_params}, images)
  decoded = decode_video(ours["vae"], vae_params, mean[:, None] * loaded["vae"][0].scaling_factor)[:, 0]
  with torch.no_grad():
    posterior = pipe.vae.encode(torch_oracle.to_torch_nchw(images)).latent_dist
    ref_decoded = pipe.vae.decode(posterior.mean).sample
  errors["vae"] = max(_err(a, torch_oracle.from_torch_nchw(b))
                      for a, b in ((mean, posterior.mean), (logvar, posterior.logvar), (decoded, ref_decoded)))
  # Text encoder: the UNet's context is last_hidden_state (see sd2_depth's docstring).
  ids = ours["tokenizer"](["a red cat", ""])
  with torch.no_grad():
    ref = pipe.text_encoder(torch.from_numpy(ids).long())[0].numpy()
  errors["text_encoder"] = _err(clip.encode_text(*loaded["text_encoder"], ids)["last_hidden_state"], ref)
  # Depth: DPT on pixels in [-1, 1], relative to the depth's scale.
  pixels = rng.uniform(-1, 1, (1, SIZE, SIZE, 3)).astype(np.float32)
  with torch.no_grad():
    ref = pipe.depth_estimator(torch_oracle.to_torch_nchw(pixels)).predicted_depth.numpy()
  depth = ours["dpt"]({"params": loaded["depth_estimator"][1]}, pixels)
  errors["depth_estimator"] = _err(depth, ref) / np.abs(ref).max()
  print("max errors:", {k: f"{v:.1e}" for k, v in errors.items()})
  assert max(errors.values()) <= TOL


@pytest.mark.filterwarnings("ignore:In CPU autocast")  # the pipeline autocasts its DPT to float32, a no-op
def test_depth_to_image_edit_matches_the_pytorch_pipeline(pipe_folder, loaded, ours):
  pipe, _, out = pipe_folder
  manifest = pretrained.read_manifest(out)
  schedule_settings, conditioning = manifest["scheduler"], manifest["conditioning"]
  steps, strength, scale, seed, prompt = 10, 0.7, 6.0, 0, "a red cat"
  ramp = np.linspace(0, 255, SIZE)
  frame = np.clip(ramp[:, None, None] * [1.0, 0.5, 0.2] + np.random.default_rng(1).normal(0, 20, (SIZE, SIZE, 3)),
                  0, 255).astype(np.uint8)
  latent_shape = (1, 4, SIZE // 2, SIZE // 2)
  # The pipeline draws two tensors from `generator`: the VAE posterior sample (prepare_latents'
  # retrieve_latents), then the SDEdit noise (randn_tensor); DDIM with eta = 0 draws nothing more.
  # Drawing them here from an identically seeded generator in that order gives us the same noise.
  generator = torch.Generator().manual_seed(seed)
  posterior_noise, sdedit_noise = (torch.randn(latent_shape, generator=generator) for _ in range(2))
  ref = pipe(prompt=prompt, image=PIL.Image.fromarray(frame), strength=strength, num_inference_steps=steps,
             guidance_scale=scale, generator=torch.Generator().manual_seed(seed), output_type="np").images

  # Ours, composed from the library: prompt -> text tokens, frame -> depth structure, SDEdit, decode.
  embeds = clip.encode_text(*loaded["text_encoder"], ours["tokenizer"]([prompt, ""]))[conditioning["text_output"]]
  # prepare_depth_map resizes DPT's output straight to the latent size (`DepthEstimator` would first
  # resize it back to the frame size, a second bicubic pass), so compose the model and its preprocessing.
  dpt_pixels = preprocess_frames(frame[None], model_input_size(SIZE, SIZE, **manifest["depth_estimator_kwargs"]))
  depth = normalize_depth_for_unet(ours["dpt"]({"params": loaded["depth_estimator"][1]}, dpt_pixels),
                                   (SIZE // 2, SIZE // 2))
  vae_config, vae_params = loaded["vae"]
  pixels = 2.0 * (frame[None].astype(np.float32) / 255.0) - 1.0
  mean, logvar = ours["encode"]({"params": vae_params}, pixels)
  to_video = lambda x: torch_oracle.from_torch_nchw(x)[:, None]  # (1, 4, h, w) -> (1, T=1, h, w, 4)
  init_latents = (mean[:, None] + np.exp(0.5 * logvar[:, None]) * to_video(posterior_noise)) * vae_config.scaling_factor
  unet_config, unet_params = loaded["unet"]
  schedule = diffusion.make_schedule(schedule_settings["beta_schedule"], schedule_settings["num_train_timesteps"],
                                     schedule_settings["beta_start"], schedule_settings["beta_end"])
  sampler = Sampler(VideoUNet(unet_config), schedule, SamplingConfig(
      num_inference_steps=steps, prediction_type=schedule_settings["prediction_type"],
      spacing=schedule_settings["timestep_spacing"], steps_offset=schedule_settings["steps_offset"],
      set_alpha_to_one=schedule_settings["set_alpha_to_one"]))
  latents = sampler(unet_params, to_video(sdedit_noise), embeds[:1], embeds[1:], structure=depth[:, None, :, :, None],
                    guidance_scale=scale, init_latents=init_latents, strength=strength)
  frames = np.clip(np.asarray(decode_video(ours["vae"], vae_params, latents))[:, 0] / 2 + 0.5, 0, 1)
  error = float(np.abs(frames - ref).max())
  print(f"max |edit - diffusers pipeline| = {error:.2e} on [0, 1] frames")
  assert ref.shape == frames.shape == (1, SIZE, SIZE, 3) and ref.std() > 0.01
  assert error <= 1e-3


def test_single_component_commands_and_a_video_unet_around_the_image_weights(pipe_folder, loaded, tmp_path, capsys,
                                                                            monkeypatch):
  _, src, _ = pipe_folder
  # Initialising the ~1,000 temporal params compiles for over a minute here; tests/models/test_unet.py
  # covers that init. Here zeros stand in, and we check the video config, the frozen spatial weights
  # and that the temporal params are reported as left at init.
  monkeypatch.setattr(diffusers_unet, "init_unet_params", lambda config, seed=0, where=None: jax.tree.map(
      lambda s: np.zeros(s.shape, s.dtype), diffusers_unet.unet_param_shapes(config)))
  for command, folder, name in (("vae", "vae", "vae"), ("clip", "text_encoder", "text_encoder"),
                                ("dpt", "depth_estimator", "depth_estimator")):
    assert main([command, str(src / folder), str(tmp_path / command)]) == 0
    single = pretrained.load_pretrained(tmp_path / command)[name]
    assert single[0] == loaded[name][0]
    _assert_same_leaves(single[1], loaded[name][1])
  assert main(["unet", str(src / "unet"), str(tmp_path / "video"), "--temporal", "make-your-video"]) == 0
  assert "left at init: " in capsys.readouterr().out
  config, params = pretrained.load_pretrained(tmp_path / "video")["unet"]
  assert (config.temporal_conv, config.temporal_attention, config.temporal_causal) == ("pseudo3d", True, True)
  flat = common.flatten(params)
  temporal = [p for p in flat if any(part.startswith("temporal_") for part in p)]
  assert temporal and len(flat) - len(temporal) == len(common.flatten(loaded["unet"][1]))
  _assert_same_leaves(params, loaded["unet"][1])  # the frozen spatial weights


def _assert_same_leaves(ours: dict, theirs: dict) -> None:
  ours = common.flatten(ours)
  for path, value in common.flatten(theirs).items():
    np.testing.assert_array_equal(ours[path], value, err_msg="/".join(path))


def _damaged_copy(src, tmp_path, damage: str):
  folder = tmp_path / "src"
  shutil.copytree(src, folder)
  if damage == "missing_component":
    shutil.rmtree(folder / "depth_estimator")
  elif damage == "corrupt_safetensors":
    (folder / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
  elif damage == "wrong_shape":
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors["conv_in.weight"] = tensors["conv_in.weight"][:, :4]  # a 4-channel (non-depth) input conv
    save_file(tensors, weights)
  elif damage == "text_width_mismatch":  # a consistent text encoder, too wide for the UNet's cross-attention
    shutil.rmtree(folder / "text_encoder")
    transformers.CLIPTextModel(transformers.CLIPTextConfig(**{**TEXT, "hidden_size": 24})).save_pretrained(
        folder / "text_encoder")
  elif damage == "config_disagrees_with_weights":
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["cross_attention_dim"] += 1
    (folder / "unet" / "config.json").write_text(json.dumps(config))
  return folder


@pytest.mark.parametrize("damage, message", [
    ("missing_component", "missing components ['depth_estimator']"),
    ("corrupt_safetensors", "not a readable safetensors file"),
    ("wrong_shape", "conv_in.weight (16, 4, 3, 3)"),
    ("config_disagrees_with_weights", "attn2/to_k/kernel"),
    ("text_width_mismatch", "cross_attention_dim 20 != text_encoder hidden_size 24"),
])
def test_bad_sources_exit_nonzero_and_write_nothing(pipe_folder, tmp_path, capsys, damage, message):
  folder = _damaged_copy(pipe_folder[1], tmp_path, damage)
  capsys.readouterr()  # drop transformers' save progress bars
  assert main(["sd2-depth", str(folder), str(tmp_path / "out")]) == EXIT_ERROR
  assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no output, no temporary directory
  err = capsys.readouterr().err
  assert err.startswith("vidjax convert sd2-depth: error: ") and message in err and "Traceback" not in err
