"""Ray intersections with the toy shapes, vectorised over frames and pixels.

Rays are stored per component, each (T, 1) for origins and (T, N) for directions, because numpy is
much faster on flat arrays than on a trailing axis of 3. Directions are not normalised: their
component along the camera axis is 1, so the ray parameter t of a hit *is* its depth along the
camera axis. Every function returns `(t, nx, ny, nz)`: t float32 (T, N), inf where the ray misses,
and the unit outward normal at the hit (garbage where t is inf; callers select by t).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

Hit = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class Rays(NamedTuple):
  """Camera rays: origins o* float32 (T, 1), directions d* float32 (T, N)."""

  ox: np.ndarray
  oy: np.ndarray
  oz: np.ndarray
  dx: np.ndarray
  dy: np.ndarray
  dz: np.ndarray


def hit_floor(rays: Rays, far: float) -> np.ndarray:
  """Depth of the floor plane y = 0: float32 (T, N), inf beyond `far` or above the horizon."""
  t = -rays.oy / rays.dy
  return np.where((rays.dy < 0) & (t < far), t, np.inf).astype(np.float32)


def hit_sphere(rays: Rays, cx: np.ndarray, cz: np.ndarray, radius: float) -> Hit:
  """A sphere resting on the floor, centred above (cx, cz) (each (T, 1))."""
  qx, qy, qz = rays.ox - cx, rays.oy - radius, rays.oz - cz
  a = rays.dx * rays.dx + rays.dy * rays.dy + rays.dz * rays.dz
  b = rays.dx * qx + rays.dy * qy + rays.dz * qz
  c = qx * qx + qy * qy + qz * qz - radius * radius
  disc = b * b - a * c
  t = (-b - np.sqrt(np.maximum(disc, 0))) / a
  t = np.where((disc > 0) & (t > 0), t, np.inf)
  inv_r = 1.0 / radius
  return (t, (qx + t * rays.dx) * inv_r, (qy + t * rays.dy) * inv_r, (qz + t * rays.dz) * inv_r)


def hit_cube(rays: Rays, cx: np.ndarray, cz: np.ndarray, half_side: float,
             yaw: np.ndarray) -> Hit:
  """A cube resting on the floor, centred above (cx, cz), turned by `yaw` (T, 1) about y."""
  cos, sin = np.cos(yaw), np.sin(yaw)
  # Slab test in the cube's own frame, where it is axis aligned.
  qx, qy, qz = rays.ox - cx, rays.oy - half_side, rays.oz - cz
  local_o = (cos * qx - sin * qz, qy, sin * qx + cos * qz)
  local_d = (cos * rays.dx - sin * rays.dz, rays.dy, sin * rays.dx + cos * rays.dz)
  nears, fars = [], []
  for o, d in zip(local_o, local_d):
    t1, t2 = (-half_side - o) / d, (half_side - o) / d
    nears.append(np.minimum(t1, t2))
    fars.append(np.maximum(t1, t2))
  t_near = np.maximum(np.maximum(nears[0], nears[1]), nears[2])
  t_far = np.minimum(np.minimum(fars[0], fars[1]), fars[2])
  t = np.where((t_near <= t_far) & (t_near > 0), t_near, np.inf)
  # The face hit is the slab entered last; its normal faces against the ray.
  lx, ly, lz = ((near == t_near) * -np.sign(d) for near, d in zip(nears, local_d))
  return t, cos * lx + sin * lz, ly, -sin * lx + cos * lz


def hit_cylinder(rays: Rays, cx: np.ndarray, cz: np.ndarray, radius: float,
                 height: float) -> Hit:
  """An upright cylinder standing on the floor (its bottom cap is never visible)."""
  qx, qz = rays.ox - cx, rays.oz - cz
  a = rays.dx * rays.dx + rays.dz * rays.dz
  b = rays.dx * qx + rays.dz * qz
  c = qx * qx + qz * qz - radius * radius
  disc = b * b - a * c
  t_side = (-b - np.sqrt(np.maximum(disc, 0))) / a
  y_side = rays.oy + t_side * rays.dy
  t_side = np.where((disc > 0) & (t_side > 0) & (y_side >= 0) & (y_side <= height), t_side, np.inf)
  t_cap = (height - rays.oy) / rays.dy
  cap_x, cap_z = qx + t_cap * rays.dx, qz + t_cap * rays.dz
  on_cap = (t_cap > 0) & (cap_x * cap_x + cap_z * cap_z <= radius * radius)
  t_cap = np.where(on_cap, t_cap, np.inf)
  top = t_cap < t_side
  t = np.minimum(t_side, t_cap)
  inv_r = 1.0 / radius
  nx = np.where(top, 0.0, (qx + t * rays.dx) * inv_r)
  nz = np.where(top, 0.0, (qz + t * rays.dz) * inv_r)
  return t, nx, top.astype(np.float32), nz


def hit_cone(rays: Rays, cx: np.ndarray, cz: np.ndarray, radius: float, height: float) -> Hit:
  """An upright cone with its base on the floor and its apex `height` above (cx, cz)."""
  slope2 = (radius / height) ** 2
  # Relative to the apex, the surface is x^2 + z^2 = slope2 * y^2 with -height <= y <= 0.
  qx, qy, qz = rays.ox - cx, rays.oy - height, rays.oz - cz
  a = rays.dx * rays.dx + rays.dz * rays.dz - slope2 * rays.dy * rays.dy
  b = rays.dx * qx + rays.dz * qz - slope2 * rays.dy * qy
  c = qx * qx + qz * qz - slope2 * qy * qy
  disc = b * b - a * c
  root = np.sqrt(np.maximum(disc, 0))
  t = np.full(rays.dx.shape, np.inf, np.float32)
  for candidate in ((-b - root) / a, (-b + root) / a):
    y = qy + candidate * rays.dy
    valid = (disc > 0) & (candidate > 0) & (y >= -height) & (y <= 0)
    t = np.where(valid, np.minimum(t, candidate), t)
  px, py, pz = qx + t * rays.dx, qy + t * rays.dy, qz + t * rays.dz
  ny = -slope2 * py
  inv_norm = 1.0 / np.sqrt(px * px + ny * ny + pz * pz)
  return t, px * inv_norm, ny * inv_norm, pz * inv_norm
