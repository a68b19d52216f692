"""Procedural 3D toy world: RGB clips with ground-truth depth, masks and captions.

  clip = render_clip(seed=3, num_frames=8, height=64, width=64)
  clip.rgb, clip.depth, clip.disparity, clip.masks, clip.caption

Small, exact and fast (pure numpy ray casting), for tests, benchmarks and toy training runs.
"""

import os

from vidjax.toyworld.captions import VOCAB_WORDS, caption_for
from vidjax.toyworld.clip import ToyClip, normalised_disparity, render_clip
from vidjax.toyworld.render import FAR, render_scene
from vidjax.toyworld.scene import (COLOURS, FLOORS, SHAPES, TIMES_OF_DAY, Scene, ToyObject,
                                   paint, recolour, sample_scene)
from vidjax.toyworld.tokenizer import build_tokenizer, save_tokenizer

# The embedded toy checkpoint (a vidjax pretrained directory, shipped with the package): the default
# of `vidjax edit`, and the pretrained start of the toy main job (configs/toy.py), as SD-2-depth is
# Make-Your-Video's.
CHECKPOINT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "toy")
# Its Gen-1-style sibling ('depth_latent' structure, trained over t_s 0..7, configs/toy_fidelity.py):
# the checkpoint of `vidjax fidelity`'s structure-fidelity curve.
FIDELITY_CHECKPOINT = os.path.join(os.path.dirname(CHECKPOINT), "toy_fidelity")
# Its Gen-1 content sibling (CLIP image embeddings from a toy CLIP, with a text -> image-embedding
# prior, configs/toy_gen1.py): image prompting and the prior on the toy world.
GEN1_CHECKPOINT = os.path.join(os.path.dirname(CHECKPOINT), "toy_gen1")

__all__ = [
    "CHECKPOINT", "COLOURS", "FIDELITY_CHECKPOINT", "FAR", "FLOORS", "GEN1_CHECKPOINT", "SHAPES", "TIMES_OF_DAY",
    "VOCAB_WORDS", "Scene", "ToyClip", "ToyObject", "build_tokenizer", "caption_for", "normalised_disparity", "paint", "recolour",
    "render_clip", "render_scene", "sample_scene", "save_tokenizer",
]
