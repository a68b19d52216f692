"""Prompting an image-embedding model through Gen-1's prior: the content the sampler gets is the prior's
sample rescaled to the image embeddings' norm, content_mix slerps it with an image's, and the inputs that
cannot work are refused before anything runs."""

from __future__ import annotations

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

import tiny_model_dir
from vidjax import cli, toyworld
from vidjax.errors import ConfigError, InputError
from vidjax.models.clip import encode_text, end_token_positions
from vidjax.models.prior import DiffusionPrior
from vidjax.pipelines import toy_edit_cli
from vidjax.pipelines.edit import VideoEditPipeline
from vidjax.pipelines.model_dir import load_model_dir
from vidjax.sampling import generate
from vidjax.sampling.prior import PriorSampler, PriorSamplingConfig, mix_content, prior_key

PROMPT, OTHER = "a red cube on a plain floor at night", "a blue sphere on a grass floor"
PRIOR_STEPS = 3


class _Captured(Exception):
  """Raised in place of sampling: the test needs the content, not the video."""


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp("models")
  return {"prior": tiny_model_dir.write(root / "prior", content="image", prior=True),
          "image": tiny_model_dir.write(root / "image", content="image"), "text": tiny_model_dir.write(root / "text")}


@pytest.fixture(scope="module")
def pipe(folders):
  return VideoEditPipeline.from_pretrained(folders["prior"], progress=False)


@pytest.fixture(scope="module")
def image_only(folders):
  """An image-embedding model whose checkpoint holds no prior."""
  return VideoEditPipeline.from_pretrained(folders["image"], progress=False)


@pytest.fixture(scope="module")
def clip():
  return toyworld.render_clip(5, num_frames=tiny_model_dir.FRAMES, height=32, width=32, stride=1)


@pytest.fixture
def content(pipe, clip, monkeypatch):
  """content(**call) -> the (1, D) content the pipeline hands the sampler (its one cross-attention token)."""

  def capture(*args, **kwargs):
    raise _Captured(kwargs["context"])

  monkeypatch.setattr(generate, "sample_latents", capture)

  def run(**call):
    with pytest.raises(_Captured) as captured:
      pipe(depth=clip.disparity, prior_num_inference_steps=PRIOR_STEPS, **call)
    context = np.asarray(captured.value.args[0])
    assert context.shape == (1, 1, 16)
    return context[:, 0]

  return run


def _direct_prior_sample(pipe, prompt: str, seed: int, guidance: float) -> np.ndarray:
  """What the prior samples for `prompt`, built here from the checkpoint's params without the pipeline."""
  prior, tokens = pipe.model_dir.prior, jnp.asarray(pipe.model_dir.tokenizer([prompt]))
  out = encode_text(prior.text_config, prior.text_params, tokens)
  end = int(end_token_positions(tokens, prior.text_config.eos_token_id)[0])  # where the text tower pools
  embeds = out["text_embeds"] / jnp.linalg.norm(out["text_embeds"], axis=-1, keepdims=True) * np.sqrt(16)
  mask = jnp.arange(tokens.shape[1])[None] <= end
  sampler = PriorSampler(DiffusionPrior(prior.prior.config), PriorSamplingConfig(num_inference_steps=PRIOR_STEPS))
  return np.asarray(sampler(prior.params, out["last_hidden_state"], embeds, mask, prior_key(seed),
                            guidance_scale=guidance))


def test_a_prompt_becomes_the_priors_sample_at_the_image_embeddings_scale(pipe, content):
  got = content(prompt=PROMPT, seed=3, prior_guidance_scale=2.0)
  np.testing.assert_allclose(got, tiny_model_dir.PRIOR_EMBED_NORM * _direct_prior_sample(pipe, PROMPT, 3, 2.0),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(got), tiny_model_dir.PRIOR_EMBED_NORM, rtol=1e-5)
  # Not the caption's own CLIP text embedding: the prior moved it towards where image embeddings lie.
  prior = pipe.model_dir.prior
  text = np.asarray(encode_text(prior.text_config, prior.text_params,
                                jnp.asarray(pipe.model_dir.tokenizer([PROMPT])))["text_embeds"])
  assert abs(float(got[0] @ text[0]) / (np.linalg.norm(got) * np.linalg.norm(text))) < 0.99
  assert not np.allclose(got, content(prompt=OTHER, seed=3, prior_guidance_scale=2.0), atol=1e-3)
  assert not np.allclose(got, content(prompt=PROMPT, seed=4, prior_guidance_scale=2.0), atol=1e-3)
  assert not np.allclose(got, content(prompt=PROMPT, seed=3, prior_guidance_scale=0.0), atol=1e-3)


def test_content_mix_runs_from_the_image_to_the_prompt_by_slerp(pipe, content, clip):
  image, prompt = content(image=clip.rgb[0]), content(prompt=PROMPT)
  np.testing.assert_array_equal(content(image=clip.rgb[0], prompt=PROMPT, content_mix=0.0), image)
  np.testing.assert_array_equal(content(image=clip.rgb[0], prompt=PROMPT, content_mix=1.0), prompt)
  half = content(image=clip.rgb[0], prompt=PROMPT)  # content_mix's default with both: 0.5
  np.testing.assert_allclose(half, content(image=clip.rgb[0], prompt=PROMPT, content_mix=0.5), rtol=1e-6)
  unit = lambda x: x[0] / np.linalg.norm(x[0])
  angle = np.arccos(unit(image) @ unit(prompt))
  assert angle > 0.1
  # Halfway along the great circle, at the mean of the two norms (a linear mix would fall short of it).
  np.testing.assert_allclose([np.arccos(unit(half) @ unit(image)), np.arccos(unit(half) @ unit(prompt))],
                             [angle / 2, angle / 2], rtol=1e-3)
  np.testing.assert_allclose(np.linalg.norm(half), (np.linalg.norm(image) + np.linalg.norm(prompt)) / 2, rtol=1e-5)
  quarter = mix_content(image, prompt, 0.25)
  np.testing.assert_allclose(np.arccos(unit(np.asarray(quarter)) @ unit(image)), angle / 4, rtol=1e-3)
  # One direction at two norms (where slerp's sin(theta) is 0): the direction kept, the norms mixed linearly.
  np.testing.assert_allclose(mix_content(image, 2 * image, 0.25), 1.25 * image, rtol=1e-5)


def test_inputs_that_cannot_work_are_refused_before_any_model_runs(folders, pipe, image_only, clip, monkeypatch):
  monkeypatch.setattr(generate, "embed_images", lambda *a: pytest.fail("an image was embedded"))
  with pytest.raises(ConfigError, match="prompt.*holds no prior.*--prior"):
    image_only(depth=clip.disparity, prompt=PROMPT)
  with pytest.raises(InputError, match="content_mix.*only a prompt was given.*pass both"):
    pipe(depth=clip.disparity, prompt=PROMPT, content_mix=0.5)
  with pytest.raises(InputError, match="content_mix.*only an image was given"):
    pipe(depth=clip.disparity, image=clip.rgb[0], content_mix=0.5)
  with pytest.raises(InputError, match="content_mix.*in \\[0, 1\\]"):
    pipe(depth=clip.disparity, image=clip.rgb[0], prompt=PROMPT, content_mix=1.5)
  with pytest.raises(InputError, match="content_mix.*only a prompt"):
    VideoEditPipeline.from_pretrained(folders["text"], progress=False)(depth=clip.disparity, prompt=PROMPT,
                                                                       content_mix=0.5)
  with pytest.raises(InputError, match="negative_prompt.*no negative content"):
    pipe(depth=clip.disparity, prompt=PROMPT, negative_prompt="red")
  with pytest.raises(InputError, match="prior_guidance_scale"):
    pipe(depth=clip.disparity, prompt=PROMPT, prior_guidance_scale=-1.0)
  with pytest.raises(InputError, match="prior_num_inference_steps"):
    pipe(depth=clip.disparity, prompt=PROMPT, prior_num_inference_steps=0)
  with pytest.raises(InputError, match="does not know 'zebra'"):
    pipe(depth=clip.disparity, prompt="a zebra", strict_prompt=True)


def test_the_cli_exits_2_and_writes_nothing_for_a_prompt_without_a_prior(folders, tmp_path, capsys):
  out = tmp_path / "edit.mp4"
  assert cli.main(["edit", "--checkpoint", folders["image"], "--prompt", PROMPT, "--out", str(out)]) == 2
  assert "holds no prior" in capsys.readouterr().err
  assert cli.main(["edit", "--checkpoint", folders["prior"], "--prompt", PROMPT, "--content-mix", "0.3",
                   "--out", str(out)]) == 2
  assert "content_mix" in capsys.readouterr().err
  assert list(tmp_path.iterdir()) == []


def test_sidecar_settings_name_the_priors_knobs(pipe, clip):
  settings = pipe.check_settings(depth=clip.disparity, prompt=PROMPT)
  assert (settings.prior_guidance_scale, settings.prior_num_inference_steps, settings.content_mix) == (1.0, 64, None)
  settings = pipe.check_settings(depth=clip.disparity, image=clip.rgb[0])
  assert (settings.prior_guidance_scale, settings.prior_num_inference_steps) == (None, None)  # the prior does not run
  assert json.dumps(pipe.check_settings(depth=clip.disparity, image=clip.rgb[0], prompt=PROMPT).content_mix) == "0.5"


def test_the_toy_benchmark_prompts_through_the_prior_when_the_checkpoint_has_one(pipe, image_only):
  assert toy_edit_cli._content_kind(pipe, None) == "prior"
  assert toy_edit_cli._content_kind(pipe, "reference_image") == "reference_image"
  assert toy_edit_cli.CONTENT_NAMES["prior"] == "prior from caption"
  assert toy_edit_cli._content_kind(image_only, None) == "reference_image"
  with pytest.raises(ConfigError, match="--content prior.*holds no prior"):
    toy_edit_cli._content_kind(image_only, "prior")


def test_a_checkpoint_whose_prior_has_no_content_scale_is_refused_at_load(folders, tmp_path):
  folder = tmp_path / "bad"
  shutil.copytree(folders["prior"], folder)
  manifest = json.loads((folder / "config.json").read_text())
  manifest["prior"]["image_embed_norm"] = 0
  (folder / "config.json").write_text(json.dumps(manifest))
  with pytest.raises(ConfigError, match="config.json: prior.image_embed_norm is 0.*--prior PRIOR_WORKDIR"):
    load_model_dir(folder)
