"""benchmarks/gpu.py end to end at its tiny size on CPU: the figures it prints and the FLOPs it counts;
benchmarks/build_shards.py on a few clips: both builders' figures, and the same bytes.

Speed is not asserted (a shared CPU says nothing about a GPU); what is checked is what the figures
mean: every figure finite and positive, the train step's count the model's (3x the UNet forward
at the reported config and sizes, never above what XLA compiled), the sample's count 50 steps of
a 2B-clip forward (classifier-free guidance doubles the batch), and MFU = count / time / peak.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import pathlib
import re
import sys

import pytest

from vidjax.models import flops
from vidjax.models.unet import UNetConfig

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

# benchmarks/build_shards.py, by path: `build_shards` alone would read as data_pipelines' job.
_SPEC = importlib.util.spec_from_file_location(
    "build_shards_benchmark", pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "build_shards.py")
build_shards_benchmark = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(build_shards_benchmark)

STEPS = 50


@pytest.fixture(scope="module")
def records() -> dict:
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert gpu.main(["--size", "tiny", "--train_steps", "1", "--sample_steps", str(STEPS),
                     "--sample_repeats", "1"]) == 0
  merged = {}
  for line in out.getvalue().splitlines():
    if line.startswith("{"):
      merged.update(json.loads(line))
  return merged


def _numbers(figures: dict) -> dict:
  return {k: v for k, v in figures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def test_figures_are_finite_and_positive(records):
  assert records["peak_source"].startswith("measured")  # CPU: the GEMM rate of the same run
  for section in ("train_step", "sample"):
    numbers = _numbers(records[section])
    assert {"flops_counted", "mfu", "tflops"} <= set(numbers)
    bad = {k: v for k, v in numbers.items() if not (math.isfinite(v) and v > 0)}
    assert not bad, (section, bad)
  assert math.isfinite(records["peak_tflops"]) and records["peak_tflops"] > 0


def test_train_step_counts_the_models_flops(records):
  train, unet = records["train_step"], records["unet"]
  config = UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in unet.items()})
  assert config.temporal_conv == "pseudo3d" and config.temporal_attention  # the Make-Your-Video architecture
  expected = flops.unet_train_flops(config, batch=train["batch"], frames=train["frames"], height=train["latent"],
                                    width=train["latent"], context_length=records["context_length"])
  assert train["flops_counted"] == expected
  # The model count leaves out elementwise work, the text tower and the optimizer, all of which XLA counts.
  assert train["flops_counted"] < train["xla_flops"]
  assert train["mfu"] == pytest.approx(train["flops_counted"] / train["seconds_per_step"] /
                                       (records["peak_tflops"] * 1e12))


def test_sample_counts_guided_steps(records):
  train, sample = records["train_step"], records["sample"]
  assert sample["steps"] == STEPS and sample["batch"] == train["batch"]
  # A train step is 3 forwards on B clips; a CFG sampling step is 1 forward on 2B clips.
  assert sample["flops_counted"] == STEPS * 2 * train["flops_counted"] // 3
  assert sample["seconds_per_step"] == pytest.approx(sample["seconds"] / STEPS)


def test_build_shards_benchmark_times_both_builders_and_finds_the_same_bytes(capsys):
  pytest.importorskip("apache_beam")
  assert build_shards_benchmark.main(["--clips", "8", "--examples_per_shard", "4"]) == 0
  out = capsys.readouterr().out
  rates = {name: float(rate) for name, rate in re.findall(r"^(local process pool|Beam DirectRunner) +([\d.]+) clips/s",
                                                          out, re.MULTILINE)}
  assert set(rates) == {"local process pool", "Beam DirectRunner"} and all(r > 0 for r in rates.values())
  ratio = float(re.search(r"Beam / local: ([\d.]+)x", out).group(1))
  # The rates are printed to 0.1 clips/s and the ratio to 0.01: at 8 clips the rates are a few clips/s,
  # so the ratio is checked against the interval those roundings allow, not a relative tolerance.
  beam, local = rates["Beam DirectRunner"], rates["local process pool"]
  assert (beam - 0.05) / (local + 0.05) - 0.005 <= ratio <= (beam + 0.05) / (local - 0.05) + 0.005
  assert "same bytes: yes" in out and "load average" in out and "CPU " in out
