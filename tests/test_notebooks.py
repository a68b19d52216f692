"""The notebooks under notebooks/ run top to bottom on a fresh kernel and are stored without outputs."""

import glob
import os
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


def _mimes(nb) -> set[str]:
  return {m for c in nb.cells if c.cell_type == "code" for o in c.outputs for m in o.get("data", {})}


def test_quickstart_runs_and_shows_an_inline_video(tmp_path):
  nb, seconds = _execute("quickstart.ipynb", "num_inference_steps = 2", str(tmp_path))
  print(f"quickstart.ipynb executed in {seconds:.1f} s")
  html = [o["data"]["text/html"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
          if "text/html" in o.get("data", {})]
  assert any("<video" in h and "base64" in h for h in html), "no embedded inline video"
  assert (tmp_path / "quickstart.mp4").stat().st_size > 0


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
