"""Vectorised numpy ray casting of a toy `Scene`: all frames and pixels at once.

One pass per clip: camera rays for every (frame, pixel), one intersection call per object, the
nearest hit wins. Shading is lambert + ambient under a sun whose colour and height follow the time
of day; the floor gets soft blob shadows and fades into the horizon colour with distance, which
also hides the aliasing of far-away floor textures at 64x64.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from vidjax.toyworld import scene as scene_lib
from vidjax.toyworld import shapes

# Depth given to the sky, and the distance beyond which the floor counts as sky (metres).
FAR = 100.0
SKY_INDEX = -1  # index of the sky in `Render.surface`; the floor is 0, object k is k + 1


class _Sky(NamedTuple):
  horizon: tuple[float, float, float]
  zenith: tuple[float, float, float]
  sun_elevation_degrees: float
  sunlight: tuple[float, float, float]
  ambient: tuple[float, float, float]


_SKIES = {  # horizon, zenith, sun elevation (degrees), sunlight, ambient light
    "day": _Sky((0.75, 0.85, 0.95), (0.25, 0.50, 0.90), 60, (0.80, 0.80, 0.75),
                (0.35, 0.37, 0.40)),
    "sunset": _Sky((1.00, 0.55, 0.25), (0.35, 0.20, 0.45), 12, (0.95, 0.55, 0.30),
                   (0.25, 0.20, 0.25)),
    "night": _Sky((0.08, 0.10, 0.20), (0.01, 0.01, 0.05), 40, (0.35, 0.40, 0.60),
                  (0.10, 0.11, 0.16)),
    "dawn": _Sky((0.95, 0.70, 0.70), (0.45, 0.60, 0.85), 15, (0.85, 0.70, 0.65),
                 (0.30, 0.28, 0.32)),
}
# Two floor colours per texture: background and pattern.
_FLOOR_COLOURS = {
    "checkered": ((0.85, 0.85, 0.85), (0.25, 0.25, 0.25)),
    "striped": ((0.80, 0.75, 0.60), (0.45, 0.35, 0.25)),
    "plain": ((0.60, 0.60, 0.55), (0.60, 0.60, 0.55)),
    "dotted": ((0.70, 0.70, 0.75), (0.20, 0.20, 0.30)),
    "grid": ((0.75, 0.75, 0.70), (0.20, 0.20, 0.20)),
}
_TEXTURE_FADE_METRES = 12.0
_FOG_METRES = 25.0


class Render(NamedTuple):
  """Rendered frames: rgb uint8 (T, H, W, 3); depth float32 (T, H, W) along the camera axis, FAR
  for sky; surface int8 (T, H, W): SKY_INDEX, 0 for floor or k + 1 for object k."""

  rgb: np.ndarray
  depth: np.ndarray
  surface: np.ndarray


def render_scene(scene: scene_lib.Scene, steps: np.ndarray, height: int, width: int) -> Render:
  """Ray casts `scene` at integer time `steps` (T,) into (T, height, width) frames."""
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    rays = _camera_rays(scene.camera, steps.astype(np.float32), height, width)
    depth, surface, normals = _nearest_hits(scene, steps.astype(np.float32), rays)
    rgb = _shade(scene, steps.astype(np.float32), rays, depth, surface, normals)
  shape = (len(steps), height, width)
  return Render(rgb.reshape(shape + (3,)), depth.reshape(shape), surface.reshape(shape))


def _camera_rays(camera: scene_lib.CameraPath, steps: np.ndarray, height: int,
                 width: int) -> shapes.Rays:
  """Pinhole rays through pixel centres; a direction's component along the view axis is 1."""
  eyes, targets = scene_lib.camera_eyes_and_targets(camera, steps)
  forward = _normalise(targets - eyes)
  right = _normalise(np.cross(forward, np.array([0.0, 1.0, 0.0], np.float32)))
  up = np.cross(right, forward)
  half_height = np.tan(np.radians(camera.fov_degrees) / 2)
  u = ((np.arange(width) + 0.5) / width * 2 - 1) * half_height * width / height
  v = (1 - (np.arange(height) + 0.5) / height * 2) * half_height
  u = np.tile(u, height).astype(np.float32)[None, :]
  v = np.repeat(v, width).astype(np.float32)[None, :]
  dirs = [forward[:, i:i + 1] + u * right[:, i:i + 1] + v * up[:, i:i + 1] for i in range(3)]
  return shapes.Rays(eyes[:, 0:1], eyes[:, 1:2], eyes[:, 2:3], *dirs)


def _normalise(vectors: np.ndarray) -> np.ndarray:
  return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)


def _nearest_hits(scene: scene_lib.Scene, steps: np.ndarray, rays: shapes.Rays):
  """Depth (T, N), surface index (T, N) and normals (3 x (T, N)) of the nearest surface."""
  depth = shapes.hit_floor(rays, FAR)
  surface = np.where(np.isfinite(depth), 0, SKY_INDEX).astype(np.int8)
  zeros = np.zeros_like(depth)
  normals = [zeros, np.ones_like(depth), zeros]
  for index, obj in enumerate(scene.objects, start=1):
    t, *normal = _hit_object(obj, steps, rays)
    nearer = t < depth
    depth = np.where(nearer, t, depth)
    surface[nearer] = index
    normals = [np.where(nearer, n, old) for n, old in zip(normal, normals)]
  depth = np.where(surface == SKY_INDEX, np.float32(FAR), depth).astype(np.float32)
  return depth, surface, normals


def _hit_object(obj: scene_lib.ToyObject, steps: np.ndarray, rays: shapes.Rays) -> shapes.Hit:
  """Intersects one object (its shape name was checked by `scene.check_scene`)."""
  centres = scene_lib.object_centres(obj, steps)
  cx, cz = centres[:, 0:1], centres[:, 2:3]
  if obj.shape == "sphere":
    return shapes.hit_sphere(rays, cx, cz, obj.size)
  if obj.shape == "cube":
    yaw = (obj.yaw + obj.spin * steps)[:, None].astype(np.float32)
    return shapes.hit_cube(rays, cx, cz, obj.size, yaw)
  if obj.shape == "cylinder":
    return shapes.hit_cylinder(rays, cx, cz, obj.size, obj.height)
  return shapes.hit_cone(rays, cx, cz, obj.size, obj.height)


def object_height(obj: scene_lib.ToyObject) -> float:
  """Full height in metres: spheres and cubes are as tall as they are wide."""
  return 2 * obj.size if obj.shape in ("sphere", "cube") else obj.height


def _sun_direction(scene: scene_lib.Scene) -> np.ndarray:
  """Unit vector towards the sun (or moon), float32 (3,)."""
  elevation = np.radians(_SKIES[scene.time_of_day].sun_elevation_degrees)
  return np.array([
      np.cos(elevation) * np.cos(scene.sun_azimuth), np.sin(elevation),
      np.cos(elevation) * np.sin(scene.sun_azimuth)
  ], np.float32)


def _shade(scene: scene_lib.Scene, steps: np.ndarray, rays: shapes.Rays, depth: np.ndarray,
           surface: np.ndarray, normals: list[np.ndarray]) -> np.ndarray:
  """Colours every pixel: uint8 (T, N, 3)."""
  sky = _SKIES[scene.time_of_day]
  sun = _sun_direction(scene)
  is_floor = surface == 0
  floor_x, floor_z = rays.ox + depth * rays.dx, rays.oz + depth * rays.dz
  lambert = np.maximum(normals[0] * sun[0] + normals[1] * sun[1] + normals[2] * sun[2], 0)
  lambert = np.where(is_floor, lambert * _blob_shadows(scene, steps, sun, floor_x, floor_z),
                     lambert)
  palette = np.array([_FLOOR_COLOURS[scene.floor][0]] +
                     [scene_lib.object_rgb(o) for o in scene.objects], np.float32)
  albedo = palette[np.maximum(surface, 0)]
  albedo[is_floor] = _floor_albedo(scene.floor, floor_x, floor_z, depth)[is_floor]
  light = np.asarray(sky.ambient, np.float32) + lambert[..., None] * np.asarray(sky.sunlight)
  rgb = albedo * light
  fog = np.where(is_floor, 1 - np.exp(-depth / _FOG_METRES), 0)[..., None]
  horizon = np.asarray(sky.horizon, np.float32)
  rgb = rgb * (1 - fog) + horizon * fog
  rgb = np.where((surface == SKY_INDEX)[..., None], _sky_colours(sky, rays), rgb)
  return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def _floor_albedo(floor: str, x: np.ndarray, z: np.ndarray, depth: np.ndarray) -> np.ndarray:
  """Textured floor colour at floor points (x, z): float32 (T, N, 3)."""
  if floor == "checkered":
    pattern = (np.floor(x) + np.floor(z)) % 2
  elif floor == "striped":
    pattern = np.floor(x * 2) % 2
  elif floor == "dotted":
    pattern = ((x - np.round(x)) ** 2 + (z - np.round(z)) ** 2 < 0.2**2).astype(np.float32)
  elif floor == "grid":
    pattern = (np.minimum(np.abs(x - np.round(x)), np.abs(z - np.round(z))) < 0.05)
    pattern = pattern.astype(np.float32)
  else:
    pattern = np.zeros_like(x)
  # Far away the pattern is finer than a pixel: fade it to its mean instead of aliasing.
  pattern = 0.5 + (pattern - 0.5) * np.exp(-depth / _TEXTURE_FADE_METRES)
  background, foreground = (np.asarray(c, np.float32) for c in _FLOOR_COLOURS[floor])
  return background + pattern[..., None] * (foreground - background)


def _blob_shadows(scene: scene_lib.Scene, steps: np.ndarray, sun: np.ndarray, x: np.ndarray,
                  z: np.ndarray) -> np.ndarray:
  """Soft round shadows cast away from the sun: a light factor in [0.35, 1], float32 (T, N)."""
  factor = np.ones_like(x)
  for obj in scene.objects:
    centre = scene_lib.object_centres(obj, steps)
    # The shadow of the object's middle lands this far from its foot, away from the sun.
    reach = object_height(obj) / 2 / max(sun[1], 0.2)
    sx = centre[:, 0:1] - sun[0] * reach
    sz = centre[:, 2:3] - sun[2] * reach
    distance = np.sqrt((x - sx) ** 2 + (z - sz) ** 2)
    factor = factor * (1 - 0.65 * np.clip(1.2 - distance / (obj.size * 1.3), 0, 1))
  return factor


def _sky_colours(sky: _Sky, rays: shapes.Rays) -> np.ndarray:
  """Vertical gradient from the horizon colour up to the zenith colour: float32 (T, N, 3)."""
  sine_elevation = rays.dy / np.sqrt(rays.dx**2 + rays.dy**2 + rays.dz**2)
  blend = np.clip(sine_elevation * 2.5, 0, 1)[..., None]
  horizon, zenith = np.asarray(sky.horizon, np.float32), np.asarray(sky.zenith, np.float32)
  return horizon + blend * (zenith - horizon)
