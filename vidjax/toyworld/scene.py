"""Random scene descriptions for the toy world, and their motion over time.

A `Scene` is a frozen, plain description (no arrays): the objects with their shapes, colours and
paths, the floor texture, the time of day and the camera path. `sample_scene(seed)` draws one with
`np.random.default_rng(seed)`, so a seed always gives the same scene; `dataclasses.replace` (or
`recolour`) edits one for re-rendering.

World frame: y is up, the floor is the plane y = 0, lengths are in metres. Motion is a function of
an integer time step; a clip renders steps 0, stride, 2 * stride, ...
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from vidjax.errors import InputError

SHAPES = ("sphere", "cube", "cylinder", "cone")
# Display-space RGB in [0, 1]; names are caption words.
COLOURS = {
    "red": (0.85, 0.10, 0.10),
    "green": (0.10, 0.70, 0.20),
    "blue": (0.15, 0.30, 0.90),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.55, 0.20, 0.75),
    "orange": (1.00, 0.50, 0.05),
    "white": (0.95, 0.95, 0.95),
    "black": (0.06, 0.06, 0.06),
    "cyan": (0.10, 0.80, 0.85),
    "pink": (1.00, 0.50, 0.70),
}
FLOORS = ("checkered", "striped", "plain", "dotted", "grid")
TIMES_OF_DAY = ("day", "sunset", "night", "dawn")
OBJECT_MOTIONS = ("linear", "circular")
CAMERA_MOTIONS = ("static", "pan", "dolly", "orbit")

# Where the camera looks at step 0; objects are laid out around it.
LOOK_AT = (0.0, 0.5, 0.0)
# Lateral positions (metres, across the initial view) for 1, 2 or 3 objects: wide enough apart that
# no object hides another completely in the first frame.
_SLOTS = {1: (0.0,), 2: (-0.85, 0.85), 3: (-1.45, 0.0, 1.45)}


@dataclasses.dataclass(frozen=True)
class ToyObject:
  """One object standing on the floor.

  `size` is the sphere radius, the cube's half side, or the base radius of a cylinder or cone;
  `height` is the full height of cylinders and cones (spheres and cubes ignore it). The object
  oscillates along `direction` (linear) or circles around `position` (circular); `angular_speed`
  is in radians per step for both, `amplitude` in metres.
  """

  shape: str
  colour: str
  size: float
  height: float
  position: tuple[float, float]  # (x, z) of the path's centre
  motion: str
  amplitude: float
  direction: float  # radians in the floor plane, for linear motion
  angular_speed: float
  phase: float
  yaw: float  # cube rotation about the vertical axis at step 0, radians
  spin: float  # cube rotation speed, radians per step
  # A colour outside COLOURS (display RGB in [0, 1]); `colour` is then its caption word, e.g. a
  # customization token. None: the colour is COLOURS[colour]. Set by `paint`.
  rgb: tuple[float, float, float] | None = None


@dataclasses.dataclass(frozen=True)
class CameraPath:
  """A camera looking at `LOOK_AT` from `distance` and `elevation`, moving by `motion`.

  pan: the camera stays and turns by up to `amplitude` radians; dolly: it moves in by up to
  `amplitude` of its distance; orbit: it circles the scene; `angular_speed` is radians per step.
  """

  azimuth: float
  distance: float
  height: float
  fov_degrees: float
  motion: str
  amplitude: float
  angular_speed: float


@dataclasses.dataclass(frozen=True)
class Scene:
  """A whole toy scene: what `render_clip` draws and what the caption describes."""

  seed: int
  objects: tuple[ToyObject, ...]
  floor: str
  time_of_day: str
  sun_azimuth: float
  camera: CameraPath


def sample_scene(seed: int) -> Scene:
  """Draws a scene with 1-3 objects of distinct colours; the same seed gives the same scene."""
  rng = np.random.default_rng(seed)
  camera = CameraPath(
      azimuth=float(rng.uniform(0, 2 * np.pi)),
      distance=float(rng.uniform(4.2, 5.5)),
      height=float(rng.uniform(1.2, 2.2)),
      fov_degrees=50.0,
      motion=str(rng.choice(CAMERA_MOTIONS)),
      amplitude=float(rng.uniform(0.1, 0.25)),
      angular_speed=float(rng.uniform(0.04, 0.1) * rng.choice((-1, 1))),
  )
  num_objects = int(rng.integers(1, 4))
  colours = rng.choice(list(COLOURS), size=num_objects, replace=False)
  objects = tuple(
      _sample_object(rng, str(colour), lateral, camera.azimuth)
      for colour, lateral in zip(colours, _SLOTS[num_objects]))
  return Scene(
      seed=int(seed),
      objects=objects,
      floor=str(rng.choice(FLOORS)),
      time_of_day=str(rng.choice(TIMES_OF_DAY)),
      sun_azimuth=float(rng.uniform(0, 2 * np.pi)),
      camera=camera,
  )


def _sample_object(rng: np.random.Generator, colour: str, lateral: float,
                   camera_azimuth: float) -> ToyObject:
  """Places one object at `lateral` metres across the initial view, with a little jitter."""
  right = np.array([-np.sin(camera_azimuth), np.cos(camera_azimuth)])
  towards_camera = np.array([np.cos(camera_azimuth), np.sin(camera_azimuth)])
  xz = (lateral + rng.uniform(-0.15, 0.15)) * right + rng.uniform(-0.6, 0.6) * towards_camera
  size = float(rng.uniform(0.3, 0.5))
  return ToyObject(
      shape=str(rng.choice(SHAPES)),
      colour=colour,
      size=size,
      height=float(size * rng.uniform(1.8, 3.0)),
      position=(float(xz[0]), float(xz[1])),
      motion=str(rng.choice(OBJECT_MOTIONS)),
      amplitude=float(rng.uniform(0.15, 0.35)),
      direction=float(rng.uniform(0, np.pi)),
      angular_speed=float(rng.uniform(0.12, 0.3) * rng.choice((-1, 1))),
      phase=float(rng.uniform(0, 2 * np.pi)),
      yaw=float(rng.uniform(0, np.pi / 2)),
      spin=float(rng.uniform(-0.1, 0.1)),
  )


def recolour(scene: Scene, colours: Sequence[str]) -> Scene:
  """Returns `scene` with object i painted `colours[i]`: same shapes, paths and silhouettes."""
  if len(colours) != len(scene.objects) or not set(colours) <= set(COLOURS):
    raise InputError("colours", f"got {list(colours)} for {len(scene.objects)} objects",
                     f"pass one colour per object, each one of {sorted(COLOURS)}")
  objects = tuple(dataclasses.replace(o, colour=c) for o, c in zip(scene.objects, colours))
  return dataclasses.replace(scene, objects=objects)


def paint(scene: Scene, name: str, rgb: Sequence[float]) -> Scene:
  """Returns `scene` with every object painted the custom colour `rgb` (display RGB in [0, 1]),
  captioned `name`: a concept the toy world's palette lacks (what customization teaches a model)."""
  rgb = tuple(float(c) for c in rgb)
  if len(rgb) != 3 or not all(0.0 <= c <= 1.0 for c in rgb) or not name or " " in name:
    raise InputError("paint", f"got name {name!r} and rgb {rgb}",
                     "pass one caption word and three values in [0, 1]")
  objects = tuple(dataclasses.replace(o, colour=name, rgb=rgb) for o in scene.objects)
  return dataclasses.replace(scene, objects=objects)


def object_rgb(obj: ToyObject) -> tuple[float, float, float]:
  """The object's display RGB in [0, 1]: its custom `rgb`, else its palette colour."""
  return obj.rgb if obj.rgb is not None else COLOURS[obj.colour]


def check_scene(scene: Scene) -> None:
  """Raises InputError naming the first field of `scene` outside the world's vocabulary."""
  fields = [("floor", scene.floor, FLOORS), ("time_of_day", scene.time_of_day, TIMES_OF_DAY),
            ("camera.motion", scene.camera.motion, CAMERA_MOTIONS)]
  for i, obj in enumerate(scene.objects):
    fields += [(f"objects[{i}].shape", obj.shape, SHAPES), (f"objects[{i}].motion", obj.motion, OBJECT_MOTIONS)]
    if obj.rgb is None:  # a custom colour (`paint`) names itself
      fields.append((f"objects[{i}].colour", obj.colour, tuple(COLOURS)))
  for name, value, known in fields:
    if value not in known:
      raise InputError(f"scene.{name}", f"unknown value {value!r}", f"use one of {list(known)}")


def object_centres(obj: ToyObject, steps: np.ndarray) -> np.ndarray:
  """Floor-level centre of `obj` at each step: float32 (T, 3) with y = 0."""
  angle = obj.phase + obj.angular_speed * steps
  if obj.motion == "linear":
    offset = obj.amplitude * np.sin(angle)
    dx, dz = offset * np.cos(obj.direction), offset * np.sin(obj.direction)
  else:
    dx, dz = obj.amplitude * np.cos(angle), obj.amplitude * np.sin(angle)
  x, z = obj.position[0] + dx, obj.position[1] + dz
  return np.stack([x, np.zeros_like(x), z], axis=-1).astype(np.float32)


def camera_eyes_and_targets(camera: CameraPath, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Camera position and look-at point at each step: two float32 (T, 3) arrays."""
  look_at = np.broadcast_to(np.asarray(LOOK_AT, np.float32), (len(steps), 3))
  azimuth = np.full(len(steps), camera.azimuth)
  distance = np.full(len(steps), camera.distance)
  if camera.motion == "orbit":
    azimuth = azimuth + camera.angular_speed * steps
  elif camera.motion == "dolly":
    distance = distance * (1 - camera.amplitude * np.sin(camera.angular_speed * steps / 2) ** 2)
  eyes = np.stack([
      distance * np.cos(azimuth), np.full(len(steps), camera.height), distance * np.sin(azimuth)
  ], axis=-1).astype(np.float32)
  if camera.motion == "pan":
    turn = camera.amplitude * np.sin(camera.angular_speed * steps)
    look_at = eyes + _rotate_about_y(look_at - eyes, turn)
  return eyes, np.ascontiguousarray(look_at, np.float32)


def _rotate_about_y(vectors: np.ndarray, angles: np.ndarray) -> np.ndarray:
  """Rotates float (T, 3) vectors by (T,) angles about the vertical axis."""
  cos, sin = np.cos(angles), np.sin(angles)
  x, y, z = vectors[:, 0], vectors[:, 1], vectors[:, 2]
  return np.stack([cos * x + sin * z, y, -sin * x + cos * z], axis=-1)
