"""Procedural 3D toy world: RGB clips with ground-truth depth, masks and captions.

  clip = render_clip(seed=3, num_frames=8, height=64, width=64)
  clip.rgb, clip.depth, clip.disparity, clip.masks, clip.caption

Small, exact and fast (pure numpy ray casting), for tests, benchmarks and toy training runs.
"""

from vidjax.toyworld.captions import VOCAB_WORDS, caption_for
from vidjax.toyworld.clip import ToyClip, normalised_disparity, render_clip
from vidjax.toyworld.render import FAR
from vidjax.toyworld.scene import (COLOURS, FLOORS, SHAPES, TIMES_OF_DAY, Scene, ToyObject,
                                   recolour, sample_scene)
from vidjax.toyworld.tokenizer import build_tokenizer, save_tokenizer

__all__ = [
    "COLOURS", "FAR", "FLOORS", "SHAPES", "TIMES_OF_DAY", "VOCAB_WORDS", "Scene", "ToyClip",
    "ToyObject", "build_tokenizer", "caption_for", "normalised_disparity", "recolour",
    "render_clip", "sample_scene", "save_tokenizer",
]
