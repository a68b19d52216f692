"""Gen-1's train step on image batches at aspect-ratio buckets (`data.image_buckets`): non-square frames
through the VAE, CLIP's resize and crop, and the UNet. Apart from test_image_step.py (its fixture, imported)
so that each file stays under a minute: every size here compiles the step once more."""

from __future__ import annotations

import numpy as np
from test_image_step import gen1_step  # pylint: disable=unused-import  (a fixture)


def test_image_batches_at_landscape_and_portrait_buckets_train(gen1_step):  # pylint: disable=redefined-outer-name
  _, step, state = gen1_step
  rng = np.random.default_rng(1)
  for height, width in ((8, 16), (16, 8)):  # multiples of the tiny model's size multiple 4
    batch = {"frames": rng.uniform(-1, 1, (4, 1, height, width, 3)).astype(np.float32),
             "depth": rng.uniform(0, 1, (4, 1, height, width, 1)).astype(np.float32),
             "structure_fidelity": np.zeros((4,), np.int32)}
    _, metrics = step(state, batch, True)
    assert float(metrics["finite"]) == 1.0 and np.isfinite(float(metrics["loss"])), (height, width)
