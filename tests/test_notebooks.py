"""The notebooks under notebooks/ run top to bottom on a fresh kernel and are stored without outputs."""

import glob
import os
import re
import time

import nbclient
import nbformat

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
MAX_STORED_BYTES = 50_000  # outputs belong in a run, not in the repository


def _execute(name: str, parameters: str, workdir: str) -> tuple[nbformat.NotebookNode, float]:
  nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1, f"{name}: needs exactly one cell tagged 'parameters'"
  # papermill's convention: injected parameters follow the tagged cell and override its defaults.
  nb.cells.insert(nb.cells.index(tagged[0]) + 1, nbformat.v4.new_code_cell(parameters))
  start = time.perf_counter()
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": workdir}}).execute()  # raises on a cell error
  return nb, time.perf_counter() - start


def _data(nb, mime: str) -> list[str]:
  """Every output of type `mime` (e.g. 'text/html', 'image/png'), in cell order."""
  return [o["data"][mime] for c in nb.cells if c.cell_type == "code" for o in c.outputs if mime in o.get("data", {})]


def _text(nb) -> str:
  """All printed output (stdout and stderr), in cell order."""
  return "".join(o["text"] for c in nb.cells if c.cell_type == "code" for o in c.outputs if o["output_type"] == "stream")


def _inline_videos(nb) -> int:
  return sum("<video" in h and "base64" in h for h in _data(nb, "text/html"))


def test_quickstart_runs_and_shows_an_inline_video_and_a_guidance_sweep(tmp_path):
  nb, seconds = _execute("quickstart.ipynb", "num_frames = 4\nnum_inference_steps = 2\nguidance_scales = (1.0, 4.0)",
                         str(tmp_path))
  print(f"quickstart.ipynb executed in {seconds:.1f} s")
  assert _inline_videos(nb) == 1, "no embedded inline video"
  assert (tmp_path / "quickstart.mp4").stat().st_size > 0
  assert len(_data(nb, "image/png")) == 1, "no guidance sweep grid"


def test_notebooks_are_stored_small_without_outputs():
  paths = sorted(glob.glob(os.path.join(NOTEBOOKS, "*.ipynb")))
  assert paths, "no notebooks found"
  for path in paths:
    assert os.path.getsize(path) < MAX_STORED_BYTES, f"{path}: stored over {MAX_STORED_BYTES} bytes"
    nb = nbformat.read(path, as_version=4)
    with_outputs = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.outputs]
    assert not with_outputs, f"{path}: cells {with_outputs} are stored with outputs; clear them"


def test_evaluate_runs_the_job_and_shows_a_results_table(tmp_path):
  nb, seconds = _execute("evaluate.ipynb", f"num_items = 1\nnum_inference_steps = 2\nworkdir = {str(tmp_path / 'eval')!r}",
                         os.path.dirname(NOTEBOOKS))  # from the checkout: configs/eval/toy.py by path
  print(f"evaluate.ipynb executed in {seconds:.1f} s")
  assert (tmp_path / "eval" / "results.json").is_file()
  tables = [o["data"]["text/markdown"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "text/markdown" in o.get("data", {})]
  assert any("toy_frame_consistency" in t and "|---|" in t for t in tables), "no results table"
  assert _data(nb, "image/png"), "no plot of the figures"


def test_edit_your_video_shows_the_controls_and_a_long_clip(tmp_path):
  nb, seconds = _execute("edit_your_video.ipynb", "num_inference_steps = 2", str(tmp_path))
  print(f"edit_your_video.ipynb executed in {seconds:.1f} s")
  assert _inline_videos(nb) == 2, "expected the controls' grid and the long clip as inline videos"
  text = _text(nb)
  assert "trained at t_s = 0 only" in text  # the toy checkpoint's range, said rather than swept
  assert re.search(r"^16 frames, temporal window 8, ", text, re.M), text  # 2x the trained length, causal window 8
  assert (tmp_path / "my_video.mp4").stat().st_size > 0 and (tmp_path / "long_edit.mp4").stat().st_size > 0


def test_train_toy_trains_with_a_live_plot_resumes_after_an_interrupt_and_edits(tmp_path):
  parameters = (f"num_examples = 8\nnum_steps = 2\nresume_steps = 8\ncheckpoint_every = 2\nbatch_size = 2\nnum_devices = 1\n"
                f"num_inference_steps = 2\nworkdir = {str(tmp_path / 'run')!r}")
  nb, seconds = _execute("train_toy.ipynb", parameters, str(tmp_path))
  print(f"train_toy.ipynb executed in {seconds:.1f} s")
  text = _text(nb)
  assert _data(nb, "image/png"), "no live loss plot"
  interrupted = re.search(r"interrupted; newest checkpoint: step (\d+)", text)
  assert interrupted, text  # the self-interrupting cell stopped the run mid-way, as the stop button does
  assert f"resumed from step {interrupted.group(1)} in" in text
  # Steps trained both before the interrupt and after resuming saw the same batches: bit-equal losses.
  again = re.findall(r"step \d+: loss ([0-9.]+) before the interrupt, ([0-9.]+) after resuming", text)
  assert again and all(before == after for before, after in again), text
  assert re.search(r"step 8: smoothed loss", text)
  assert _inline_videos(nb) == 2, "expected the toy world and the trained model's edit as inline videos"
