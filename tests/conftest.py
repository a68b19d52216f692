"""Test setup: 8 fake CPU devices (set before jax is imported) and shared helpers."""

import os

# XLA's CPU compiles dominate the suite's time, and tests run tiny models whose matmuls and convs are
# library calls anyway: LLVM's -O0 backend halves a typical file's CPU time (tests/models/test_vae.py:
# 68 s -> 34 s) at the same numbers. XLA's older loop emitters for fusions compile faster still:
# tests/models/test_unet.py and test_step_paths.py took 227 s of CPU against 183 s without the fusion
# emitters (cold compilation cache, 2-core Zen 3). Appended, so flags a caller set still apply.
_TEST_XLA_FLAGS = ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0",
                   "--xla_cpu_use_fusion_emitters=false")
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", "")] + [
    flag for flag in _TEST_XLA_FLAGS if flag.split("=")[0] not in os.environ.get("XLA_FLAGS", "")]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tests (and the subprocesses they start: kill and resume runs) compile the same programs
# repeatedly, so they share a persistent compilation cache.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), ".cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pathlib

import pytest

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_video():
  """Path getter for the real videos in ../shared/data; skips with a reason when absent."""

  def get(name: str) -> pathlib.Path:
    path = SHARED_DATA / name
    if not path.exists():
      pytest.skip(f"{path} is absent: ../shared/data is only beside the project in CI and dev checkouts")
    return path

  return get


# Files that take longest, heaviest first. pytest-xdist hands whole files (`--dist loadfile`) to the
# two workers in collection order; by default it reorders them by test count, which sent the
# few-but-long subprocess tests last and left one worker running them alone at the end. Heavy files
# first, then the rest in their usual order, lets the workers finish together (longest job first).
# test_loop.py's runs and test_loop_processes.py's compile the same programs: started together they
# compiled each twice at once (about 180 s of CPU on 2 cores), so test_train_step.py (other programs)
# runs beside the first and test_loop.py finds its programs in the persistent cache.
HEAVIEST_FIRST = (
    "tests/train/test_gen1_chain.py",  # Gen-1's four stages trained, exported and edited: about 4 min on 2 cores
    "tests/train/test_loop_processes.py",
    "tests/train/test_train_step.py",
    "tests/train/test_loop.py",
    "tests/train/test_toy_recipe.py",  # the main job at 2 steps: about 2 min on 2 cores
    "tests/pipelines/test_fidelity.py",  # four claims on the toy checkpoints at 2-3 scenes: about 3 min on 2 cores
    "tests/pipelines/test_edit_cli.py",
    "tests/pipelines/test_evaluate.py",
    "tests/pipelines/test_edit.py",
    "tests/convert/test_make_your_video.py",
    "tests/sampling/test_sampler.py",  # 60 s since its 16-frame test samples 3 steps of a small latent
    "tests/test_benchmarks.py",  # benchmarks/gpu.py at its tiny size: about 45 s
)


def pytest_collection_modifyitems(config, items):
  rank = {path: i for i, path in enumerate(HEAVIEST_FIRST)}
  root = pathlib.Path(config.rootpath)
  where = lambda item: rank.get(pathlib.Path(item.path).relative_to(root).as_posix(), len(rank))
  items.sort(key=where)  # stable: the order within each file, and among the rest, is kept
