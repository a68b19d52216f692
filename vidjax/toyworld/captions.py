"""The caption grammar of the toy world.

  caption  := objects " on a " FLOOR " floor " time
            | "an empty " FLOOR " floor " time           (a scene without objects)
  objects  := object | object " and " object | object ", " object " and " object
  object   := ARTICLE " " COLOUR " " SHAPE             ("an" before a vowel, else "a")
  time     := "during the day" | "at sunset" | "at night" | "at dawn"

e.g. "a yellow cube and a purple sphere on a checkered floor at night". Every caption names each
object's colour and shape (in scene order), the floor texture and the time of day, and nothing else.
"""

from __future__ import annotations

from vidjax.toyworld import scene as scene_lib

_TIME_PHRASES = {"day": "during the day", "sunset": "at sunset", "night": "at night",
                 "dawn": "at dawn"}


def _object_phrase(colour: str, shape: str) -> str:
  article = "an" if colour[0] in "aeiou" else "a"
  return f"{article} {colour} {shape}"


def caption_for(scene: scene_lib.Scene) -> str:
  """The caption of `scene`, following the grammar in this module's docstring."""
  phrases = [_object_phrase(o.colour, o.shape) for o in scene.objects]
  time = _TIME_PHRASES[scene.time_of_day]
  if not phrases:
    return f"an empty {scene.floor} floor {time}"
  objects = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
  return f"{objects} on a {scene.floor} floor {time}"


def _grammar_words() -> tuple[str, ...]:
  """Every word (and the comma) the grammar can produce, in a fixed order."""
  words = ["a", "an", "and", ",", "on", "floor", "empty"]
  words += list(scene_lib.COLOURS) + list(scene_lib.SHAPES) + list(scene_lib.FLOORS)
  for phrase in _TIME_PHRASES.values():
    words += phrase.split()
  return tuple(dict.fromkeys(words))  # drops repeats, keeps the first occurrence's order


VOCAB_WORDS = _grammar_words()
