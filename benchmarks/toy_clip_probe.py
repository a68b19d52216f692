"""Whether a toy CLIP image embedding says which object has which colour, and which shape: three held-out figures.

  python benchmarks/toy_clip_probe.py runs/toy_gen1/clip_stage/checkpoints

1. The swap test (binding, read by the CLIP's own text tower): on held-out scenes whose first two
   objects differ in colour, how often the frame's embedding scores its true caption above the
   caption with those two colours swapped (chance 50 %; a bag of colours cannot tell them apart).
2. The probe: an MLP (one hidden layer of 256, Adam, weight decay) names an object's colour among
   the 10 palette colours from its frame's (D,) embedding and its shape (one-hot), trained on
   --train_scenes scenes (seeds from 2,000,000), scored on --test_scenes others (seeds from
   2,100,000). Two objects of one shape in a scene make their rows ambiguous (30 % of the held-out
   objects), so the figure is also given over the objects whose shape is unique in their scene.
3. The shape probe: on the one-object scenes among the same seeds, a ridge least-squares classifier
   names the object's shape among the 4 from the (D,) embedding alone (chance 25 %), and the same
   classifier its colour, for comparison. The text context's error is largest at the shape words
   (configs/toy_gen1.py), which this says whether the embedding can carry at all.
Each scene's first 64x64 frame goes through the vision tower of a `vidjax train` CLIP stage (its saved
config gives the towers); the seeds are outside the CLIP's training seeds and the recolouring
benchmark's. Image prompting can recolour an object only as well as its content embedding says which
colour the object has; configs/toy_gen1.py quotes the figures.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vidjax import toyworld
from vidjax.eval import toy_edit
from vidjax.conditioning.tokens import tokenize
from vidjax.models.clip import CLIPVisionConfig, encode_image, preprocess_images
from vidjax.train import clip_stage
from vidjax.train.checkpoint import Checkpointer, load_params


def swap_test(config: ml_collections.ConfigDict, params, seeds: range) -> tuple[int, int]:
  """(scenes whose true caption beats its colour-swapped twin, scenes tested) over `seeds`."""
  towers = clip_stage.Towers(config)
  embed_text, embed_pixels = jax.jit(towers.embed_text), jax.jit(towers.embed_pixels)
  wins = tested = 0
  for seed in seeds:
    scene = toyworld.sample_scene(seed)
    colours = [o.colour for o in scene.objects]
    if len(colours) < 2 or colours[0] == colours[1]:
      continue
    captions = [toyworld.caption_for(scene),
                toyworld.caption_for(toyworld.recolour(scene, [colours[1], colours[0]] + colours[2:]))]
    frame = toyworld.render_clip(seed, 1, 64, 64, scene=scene).rgb[0]
    image = np.asarray(embed_pixels(params, preprocess_images(frame[None], towers.image_config.image_size)))[0]
    tokens = tokenize(captions, config.data.tokenizer_dir, config.data.max_caption_tokens)
    scores = np.asarray(embed_text(params, jnp.asarray(tokens))) @ image
    wins, tested = wins + int(scores[0] > scores[1]), tested + 1
  return wins, tested


def probe_rows(config: CLIPVisionConfig, params, seeds: range) -> dict[str, np.ndarray]:
  """One row per object of the scenes `seeds`: its frame's embedding 'embeds' (N, D) float32, and (N,)
  'shapes' and 'colours' (indices into toyworld.SHAPES and the palette), 'unique' (its shape is the only
  one of its kind in its scene) and 'objects' (its scene's object count)."""
  embed = jax.jit(lambda pixels: encode_image(config, params, pixels)["image_embeds"])
  rows = {key: [] for key in ("embeds", "shapes", "colours", "unique", "objects")}
  for start in range(seeds.start, seeds.stop, 256):
    scenes = [toyworld.sample_scene(s) for s in range(start, min(start + 256, seeds.stop))]
    frames = np.stack([toyworld.render_clip(s.seed, 1, 64, 64, scene=s).rgb[0] for s in scenes])
    embeds = np.asarray(embed(preprocess_images(frames, config.image_size)))
    for scene, e in zip(scenes, embeds):
      for obj in scene.objects:
        rows["embeds"].append(e)
        rows["shapes"].append(toyworld.SHAPES.index(obj.shape))
        rows["colours"].append(list(toy_edit.PALETTE).index(obj.colour))
        rows["unique"].append(sum(o.shape == obj.shape for o in scene.objects) == 1)
        rows["objects"].append(len(scene.objects))
  return {key: np.asarray(value, np.float32 if key == "embeds" else None) for key, value in rows.items()}


def with_shape(rows: dict[str, np.ndarray]) -> np.ndarray:
  """The colour probe's input: (N, D + 4), each row's embedding and its object's one-hot shape."""
  return np.concatenate([rows["embeds"], np.eye(len(toyworld.SHAPES), dtype=np.float32)[rows["shapes"]]], axis=1)


def ridge_accuracy(x_train, y_train, x_test, y_test, num_classes: int, ridge: float = 1e-2) -> float:
  """Held-out accuracy of a least-squares linear classifier (one-hot targets, a bias, L2 `ridge`)."""
  design = lambda x: np.c_[x, np.ones(len(x))]
  a = design(x_train)
  weights = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ np.eye(num_classes)[y_train])
  return float(np.mean((design(x_test) @ weights).argmax(1) == y_test))


def train_probe(x_train, y_train, x_test, y_test, unique, steps: int = 3000,
                seed: int = 0) -> list[tuple[int, float, float, float]]:
  """[(step, train accuracy, held-out accuracy, held-out accuracy where the shape is unique)] every 1000 steps."""
  mean, std = x_train.mean(0), x_train.std(0) + 1e-6
  x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
  k1, k2 = jax.random.split(jax.random.key(seed))
  d = x_train.shape[1]
  params = {"w1": jax.random.normal(k1, (d, 256)) / np.sqrt(d), "b1": jnp.zeros(256),
            "w2": jax.random.normal(k2, (256, 10)) / 16, "b2": jnp.zeros(10)}
  logits = lambda p, x: jax.nn.gelu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
  loss = lambda p, x, y: (optax.softmax_cross_entropy_with_integer_labels(logits(p, x), y).mean()
                          + 1e-4 * sum(jnp.sum(v ** 2) for v in jax.tree.leaves(p)))
  optimiser = optax.adam(1e-3)
  state = optimiser.init(params)

  @jax.jit
  def step(p, s, x, y):
    updates, s = optimiser.update(jax.grad(loss)(p, x, y), s)
    return optax.apply_updates(p, updates), s

  accuracy = lambda p, x, y: float((logits(p, x).argmax(1) == y).mean())
  rng, history = np.random.default_rng(seed), []
  for i in range(1, steps + 1):
    batch = rng.integers(0, len(x_train), 256)
    params, state = step(params, state, x_train[batch], y_train[batch])
    if i % 1000 == 0:
      history.append((i, accuracy(params, x_train, y_train), accuracy(params, x_test, y_test),
                      accuracy(params, x_test[unique], y_test[unique])))
  return history


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("clip_checkpoints", help="a CLIP stage's checkpoint folder (<workdir>/clip_stage/checkpoints)")
  parser.add_argument("--train_scenes", type=int, default=4000)
  parser.add_argument("--test_scenes", type=int, default=500)
  args = parser.parse_args(argv)
  with Checkpointer(args.clip_checkpoints, async_save=False) as checkpointer:
    saved = ml_collections.ConfigDict(checkpointer.saved_config(checkpointer.latest_step()))
  config = CLIPVisionConfig(**saved.model.image_encoder.to_dict())
  everything = load_params(args.clip_checkpoints)
  wins, tested = swap_test(saved, everything, range(2_100_000, 2_100_000 + args.test_scenes))
  print(f"swap test: the true caption above its colour-swapped twin for {wins}/{tested} = {100 * wins / tested:.1f} % "
        "of held-out scenes (chance 50 %)")
  params = everything["image_encoder"]
  train = probe_rows(config, params, range(2_000_000, 2_000_000 + args.train_scenes))
  test = probe_rows(config, params, range(2_100_000, 2_100_000 + args.test_scenes))
  print(f"{len(train['colours'])} training objects, {len(test['colours'])} held-out objects, {test['unique'].sum()} of "
        "them the only one of their shape in their scene (chance 10 %)")
  history = train_probe(with_shape(train), train["colours"], with_shape(test), test["colours"], test["unique"])
  for step, train_accuracy, test_accuracy, test_unique in history:
    print(f"step {step}: train {100 * train_accuracy:.1f} %, held-out {100 * test_accuracy:.1f} % "
          f"(shape unique {100 * test_unique:.1f} %)")
  # A one-object scene has one row, so its rows are its scenes.
  alone = [{key: value[rows["objects"] == 1] for key, value in rows.items()} for rows in (train, test)]
  shape, colour = (ridge_accuracy(alone[0]["embeds"], alone[0][key], alone[1]["embeds"], alone[1][key], n)
                   for key, n in (("shapes", len(toyworld.SHAPES)), ("colours", len(toy_edit.PALETTE))))
  print(f"shape probe over {len(alone[1]['shapes'])} held-out one-object scenes ({len(alone[0]['shapes'])} to fit): "
        f"shape {100 * shape:.1f} % (chance {100 / len(toyworld.SHAPES):.0f} %), colour {100 * colour:.1f} % "
        f"(chance {100 / len(toy_edit.PALETTE):.0f} %)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
