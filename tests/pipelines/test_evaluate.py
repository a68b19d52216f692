"""`vidjax evaluate` end to end on a tiny random checkpoint: results, resume without recomputing, bad settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import tiny_model_dir
from vidjax import cli
from vidjax.errors import EXIT_ERROR
from vidjax.pipelines import evaluate

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "eval", "toy.py")


def _args(checkpoint, workdir, *extra):
  return ["--config", CONFIG, "--workdir", str(workdir), f"--config.checkpoint={checkpoint}", "--config.num_items=2",
          f"--config.num_frames={tiny_model_dir.FRAMES}", f"--config.size={tiny_model_dir.SIZE}", "--config.stride=1",
          "--config.num_inference_steps=2", "--config.guidance_scale=1.0", *extra]


def test_evaluate_writes_results_and_resumes_without_recomputing(tmp_path, monkeypatch):
  checkpoint = tiny_model_dir.write(tmp_path / "model")
  workdir = tmp_path / "eval"
  computed = []
  real_features = evaluate.toy_metrics.case_features
  monkeypatch.setattr(evaluate.toy_metrics, "case_features",
                      lambda output, case: computed.append(case.seed) or real_features(output, case))
  assert cli.main(["evaluate", *_args(checkpoint, workdir)]) == 0
  results = json.loads((workdir / "results.json").read_text())
  assert [f["metric"] for f in results["figures"]] == ["toy_silhouette_iou", "toy_colour_accuracy",
                                                       "toy_frame_consistency"]
  assert all(f["count"] == 2 and 0.0 <= f["value"] for f in results["figures"])
  assert len(computed) == 2 and results["settings"]["num_items"] == 2
  page = (workdir / "index.html").read_text()
  for key in results["items"]:
    assert f'src="videos/{key}.gif"' in page and (workdir / "videos" / f"{key}.gif").stat().st_size > 0
  assert "toy_colour_accuracy" in page and any(n.startswith("events.") for n in os.listdir(workdir / "logs"))
  # A restart recomputes nothing; one lost item is the only one recomputed, with the same figures.
  os.remove(workdir / "features" / f"toy-{computed[1]}.npz")
  (workdir / "results.json").unlink()
  assert cli.main(["evaluate", *_args(checkpoint, workdir)]) == 0
  assert computed[2:] == [computed[1]]
  assert json.loads((workdir / "results.json").read_text()) == results


def test_evaluate_refuses_other_settings_in_the_same_workdir(tmp_path, capsys):
  workdir = tmp_path / "eval"
  workdir.mkdir()
  (workdir / "settings.json").write_text(json.dumps({"protocol": "toy", "num_items": 99}))
  assert cli.main(["evaluate", *_args("none", workdir)]) == EXIT_ERROR
  assert "other settings" in capsys.readouterr().err
  assert cli.main(["evaluate", *_args("none", tmp_path / "b", "--config.protocol=ucf101")]) == EXIT_ERROR
  assert "not implemented" in capsys.readouterr().err
  assert not (tmp_path / "b" / "features").exists()


@pytest.mark.slow
def test_two_processes_through_launch_local_give_the_figures_of_one(tmp_path):
  checkpoint = tiny_model_dir.write(tmp_path / "model")
  assert cli.main(["evaluate", *_args(checkpoint, tmp_path / "one", "--config.num_items=4")]) == 0
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
  command = [sys.executable, "-m", "launch.local", "--num_processes", "2", "--", "evaluate",
             *_args(checkpoint, tmp_path / "two", "--config.num_items=4")]
  run = subprocess.run(command, env=env, cwd=root, timeout=600, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr[-2000:]
  assert "4 items (2 computed" in run.stdout  # process 0 computed its half; process 1 the other
  one, two = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("one", "two"))
  assert one["figures"] == two["figures"] and one["items"] == two["items"]
  assert sorted(os.listdir(tmp_path / "two" / "features")) == [k + ".npz" for k in sorted(one["items"])]
