"""`vidjax edit` on tiny random checkpoints: outputs and their names, sweeps, refused inputs, kills mid-write."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import tiny_model_dir
from vidjax import cli
from vidjax.data import video_io
from vidjax.pipelines.edit import VideoEditPipeline

PROMPT = "a red cube on a plain floor at night"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FRAMES, SIZE = tiny_model_dir.FRAMES, tiny_model_dir.SIZE


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  root = tmp_path_factory.mktemp("models")
  return {"text": tiny_model_dir.write(root / "text"), "image": tiny_model_dir.write(root / "image", content="image")}


def edit(*args) -> int:
  """`vidjax edit ARGS` in-process (2 DDIM steps, no progress bar) -> exit status."""
  return cli.main(["edit", "--steps", "2", "--no-progress", *map(str, args)])


def grid_shape(columns: int, frames: int = FRAMES, size: int = SIZE) -> tuple[int, ...]:
  """The shape make_grid gives `columns` panels (label bars included), from dummy arrays."""
  dummy = np.zeros((frames, size, size, 3), np.uint8)
  return video_io.make_grid([dummy] * columns, ["x"] * columns).shape


def test_a_toy_clip_edit_writes_the_video_its_grid_and_a_sidecar(checkpoints, tmp_path, capsys):
  out = tmp_path / "new" / "out.mp4"  # the folder is created
  assert edit("--checkpoint", checkpoints["text"], "--prompt", PROMPT, "--seed", 7, "--out", out) == 0
  names = ["out.mp4", "out_grid.mp4", "out.json"]
  assert sorted(os.listdir(out.parent)) == sorted(names)
  assert capsys.readouterr().out.splitlines() == [f"wrote {out.parent / n}" for n in names]

  record = json.loads((out.parent / "out.json").read_text())
  settings = record["settings"]
  assert settings["seed"] == 7 and settings["prompt"] == PROMPT and settings["num_inference_steps"] == 2
  assert settings["num_frames"] == FRAMES and settings["checkpoint"] == os.path.abspath(checkpoints["text"])
  assert settings["video"].startswith("toy world clip, seed 1000000, caption '") and settings["fps"] == 8
  assert settings["warnings"] == [] and set(record["timings"]) >= {"sampling", "decode"}
  assert record["outputs"] == {"video": str(out), "grid": str(out.parent / "out_grid.mp4"),
                               "sidecar": str(out.parent / "out.json")}
  assert record["command"][:2] == ["vidjax", "edit"] and "--seed" in record["command"]

  assert video_io.read_video(out).shape == (FRAMES, SIZE, SIZE, 3)
  assert video_io.probe(out).fps == 8
  assert video_io.read_video(out.parent / "out_grid.mp4").shape == grid_shape(3)  # input | depth | output

  # A .gif suffix writes gifs; a smaller --max-side is a warning, printed on stderr and kept in the sidecar.
  gif = tmp_path / "gif" / "x.gif"
  assert edit("--checkpoint", checkpoints["text"], "--prompt", PROMPT, "--max-side", 24, "--out", gif) == 0
  assert sorted(os.listdir(gif.parent)) == ["x.gif", "x.json", "x_grid.gif"]
  assert video_io.probe(gif).codec == "gif" and video_io.read_video(gif).shape == (FRAMES, 24, 24, 3)
  err = capsys.readouterr().err
  assert "warning: frames changed from 32x32 to 24x24" in err
  assert json.loads((gif.parent / "x.json").read_text())["settings"]["warnings"]


def test_unknown_prompt_words_warn_on_stderr_and_in_the_sidecar_and_strict_prompt_refuses(checkpoints, tmp_path,
                                                                                           capsys):
  out = tmp_path / "out.mp4"
  assert edit("--checkpoint", checkpoints["text"], "--prompt", "a red coffee cup", "--out", out) == 0
  err = capsys.readouterr().err
  assert "warning: prompt 'a red coffee cup': the tokenizer does not know 'coffee', 'cup'" in err, err
  settings = json.loads((tmp_path / "out.json").read_text())["settings"]
  assert any("'coffee', 'cup'" in w for w in settings["warnings"]) and settings["strict_prompt"] is False

  strict = tmp_path / "strict"
  strict.mkdir()
  assert edit("--checkpoint", checkpoints["text"], "--prompt", "a red coffee cup", "--strict-prompt",
              "--out", strict / "out.mp4") == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("vidjax edit: error: prompt 'a red coffee cup'"), err
  assert "'coffee', 'cup'" in err and "use words the tokenizer knows" in err and "--strict-prompt" in err
  assert os.listdir(strict) == []


def test_the_checkpoints_sampling_defaults_fill_unset_flags_and_the_sidecar_records_them(tmp_path):
  folder = tiny_model_dir.write(tmp_path / "tuned", sampling_defaults={"guidance_scale": 2.5, "eta": 0.5})
  out = tmp_path / "out.mp4"
  assert edit("--checkpoint", folder, "--prompt", PROMPT, "--eta", 0, "--out", out) == 0
  settings = json.loads((tmp_path / "out.json").read_text())["settings"]
  # guidance from the checkpoint, eta from its flag, temporal guidance from the built-in default
  assert (settings["guidance_scale"], settings["eta"], settings["temporal_guidance_scale"]) == (2.5, 0.0, 1.0)


def test_a_sweep_writes_one_labelled_grid_and_one_settings_entry_per_value(checkpoints, tmp_path, capsys):
  out = tmp_path / "sweep.mp4"
  assert edit("--checkpoint", checkpoints["text"], "--prompt", PROMPT, "--sweep", "temporal_guidance=0.5,1,1.5",
              "--out", out) == 0
  assert sorted(os.listdir(tmp_path)) == ["sweep.json", "sweep.mp4"]
  assert video_io.read_video(out).shape == grid_shape(2 + 3)  # input | depth | 3 values
  record = json.loads((tmp_path / "sweep.json").read_text())
  # The old name is an alias: the sweep and the sidecar use the one name.
  assert record["sweep"] == {"name": "temporal_guidance_scale", "values": [0.5, 1.0, 1.5]}
  assert [s["temporal_guidance_scale"] for s in record["settings"]] == [0.5, 1.0, 1.5]
  assert len({s["seed"] for s in record["settings"]}) == 1 and len(record["timings"]) == 3
  assert capsys.readouterr().out.splitlines() == [f"wrote {out}", f"wrote {tmp_path / 'sweep.json'}"]


@pytest.mark.parametrize("sweep, match, loads_model", [
    ("bogus=1", "--sweep bogus", False),
    ("seed=1,2.5", "'2.5'", False),
    ("structure-fidelity=0,5", "structure_fidelity", True),  # out of range: found before the first edit
])
def test_a_bad_sweep_exits_2_naming_the_setting_and_writes_nothing(checkpoints, tmp_path, capsys, monkeypatch,
                                                                   sweep, match, loads_model):
  def no_edit(*args, **kwargs):
    raise AssertionError("an edit ran")

  monkeypatch.setattr(VideoEditPipeline, "edit", no_edit)
  if not loads_model:
    monkeypatch.setattr(VideoEditPipeline, "from_pretrained", no_edit)
  assert edit("--checkpoint", checkpoints["text"], "--prompt", PROMPT, "--sweep", sweep,
              "--out", tmp_path / "sweep.mp4") == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("vidjax edit: error: ") and match in err
  assert os.listdir(tmp_path) == []


def _refused_args(case: str, inputs, checkpoints) -> tuple[list, str, bool]:
  """-> (arguments but --out, what the one-line message names, whether it is refused before the model loads)."""
  text = ["--checkpoint", checkpoints["text"], "--prompt", PROMPT]
  if case == "missing_video":
    return text + ["--video", inputs / "nope.mp4"], "nope.mp4", True
  if case == "not_a_video":
    (inputs / "notes.mp4").write_text("this is not a video\n")
    return text + ["--video", inputs / "notes.mp4"], "notes.mp4", True
  if case == "empty_video":
    (inputs / "empty.mp4").write_bytes(b"")
    return text + ["--video", inputs / "empty.mp4"], "empty.mp4", True
  if case == "mask_size":  # the toy clip is 32x32
    Image.fromarray(np.full((31, 32), 255, np.uint8)).save(inputs / "mask.png")
    return text + ["--mask", inputs / "mask.png"], "mask.png", False
  if case == "fidelity":  # tiny_model_dir trains t_s in [0, 2]
    return text + ["--structure-fidelity", 3], "structure_fidelity", False
  if case == "temporal_guidance":
    return text + ["--temporal-guidance", -1], "temporal_guidance_scale", False
  if case == "window":
    return text + ["--temporal-window", 0], "temporal_window", False
  if case == "image_for_text_model":
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(inputs / "content.png")
    return text + ["--image", inputs / "content.png"], "image", False
  if case == "prompt_for_image_model":
    return ["--checkpoint", checkpoints["image"], "--prompt", PROMPT], "prompt", False
  if case == "thin_strip":  # 512x16: 16 px high, but --max-side's default (the trained 32) makes it 32x1
    video_io.write_video(inputs / "strip.mp4", np.zeros((FRAMES, 16, 512, 3), np.uint8))
    return text + ["--video", inputs / "strip.mp4"], "by max_side 32", False
  if case == "out_suffix":
    return text, "out.avi", True
  raise ValueError(case)


@pytest.mark.parametrize("case", ["missing_video", "not_a_video", "empty_video", "mask_size", "fidelity",
                                  "temporal_guidance", "window", "image_for_text_model", "prompt_for_image_model",
                                  "thin_strip", "out_suffix"])
def test_bad_inputs_exit_2_with_one_line_and_write_nothing(checkpoints, tmp_path, capsys, monkeypatch, case):
  inputs, folder = tmp_path / "inputs", tmp_path / "out"
  inputs.mkdir()
  folder.mkdir()
  loads = []
  load = VideoEditPipeline.from_pretrained.__func__
  monkeypatch.setattr(VideoEditPipeline, "from_pretrained",
                      classmethod(lambda cls, *a, **k: loads.append(1) or load(cls, *a, **k)))
  args, named, early = _refused_args(case, inputs, checkpoints)
  out = folder / ("out.avi" if case == "out_suffix" else "out.mp4")
  assert edit(*args, "--out", out) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("vidjax edit: error: ") and named in err, err
  assert os.listdir(folder) == []
  if early:
    assert not loads, "refused only after loading the model"


def _kill_mid_write(checkpoint: str, folder, num_frames: int, log) -> tuple[int, list[str]]:
  """Runs `vidjax edit` in a subprocess, SIGKILLs it as soon as a temporary output appears in `folder`.

  Returns (exit status, the temporaries left after the kill): -SIGKILL with leftovers when the kill came
  mid-write; 0 and none when the write was quicker than the polling.
  """
  command = [sys.executable, "-m", "vidjax.cli", "edit", "--checkpoint", checkpoint, "--prompt", PROMPT,
             "--steps", "2", "--no-progress", "--num-frames", str(num_frames), "--out", str(folder / "out.mp4")]
  with open(log, "w") as stream:
    process = subprocess.Popen(command, cwd=REPO, stdout=stream, stderr=subprocess.STDOUT)
    try:
      while process.poll() is None:
        # errors.atomic_path's temporaries: '.<stem>.tmp-XXXX<suffix>' beside the target.
        if any(".tmp-" in name for name in os.listdir(folder)):
          process.send_signal(signal.SIGKILL)  # a no-op if it exited meanwhile
          break
        time.sleep(0.002)
      process.wait(timeout=60)
    except BaseException:
      process.kill()
      raise
  return process.returncode, sorted(n for n in os.listdir(folder) if ".tmp-" in n)


def test_a_kill_while_writing_leaves_no_partial_output(checkpoints, tmp_path):
  for attempt, num_frames in enumerate([FRAMES, 24, 24]):  # longer clips take longer to write
    folder = tmp_path / f"attempt{attempt}"
    folder.mkdir()
    status, leftovers = _kill_mid_write(checkpoints["text"], folder, num_frames, tmp_path / f"log{attempt}.txt")
    if status == -signal.SIGKILL and leftovers:
      break
    assert status == 0, (tmp_path / f"log{attempt}.txt").read_text()
  else:
    pytest.fail("the edit finished writing before a temporary file was seen, three times")
  # The kill came while temporaries existed (they are still there: a killed process cleans nothing up) ...
  targets = ["out.mp4", "out_grid.mp4", "out.json"]
  assert set(os.listdir(folder)) - set(leftovers) <= set(targets)
  # ... and every target is either absent or complete.
  for name in targets:
    path = folder / name
    if not path.exists():
      continue
    if name.endswith(".json"):
      assert json.loads(path.read_text())["settings"]["num_frames"] == num_frames
    else:
      assert len(video_io.read_video(path)) == num_frames


def test_image_prompting_takes_one_image_several_or_a_folder(checkpoints, tmp_path):
  refs = tmp_path / "refs"
  refs.mkdir()
  rng = np.random.default_rng(0)
  for name in ("a.png", "b.jpg"):
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8)).save(refs / name)
  runs = {"one": [refs / "a.png"], "two": [refs / "a.png", refs / "b.jpg"], "folder": [refs]}
  for name, images in runs.items():
    out = tmp_path / name / "out.mp4"
    assert edit("--checkpoint", checkpoints["image"], "--image", *images, "--seed", 3, "--out", out) == 0
    assert json.loads((out.parent / "out.json").read_text())["settings"]["image"] == [str(p) for p in images]
  frames = {name: video_io.read_video(tmp_path / name / "out.mp4") for name in runs}
  np.testing.assert_array_equal(frames["folder"], frames["two"])  # the folder's images, averaged as the list's
  missing = tmp_path / "none.png"
  assert edit("--checkpoint", checkpoints["image"], "--image", refs / "a.png", missing, "--out", tmp_path / "x.mp4") == 2
  assert not (tmp_path / "x.mp4").exists()
