"""Param trees as flat {path: leaf} dicts: the project's one flattener.

A path is a tuple of keys; `path_string` joins one with '/' as checkpoints, optimizer masks and
sharding rules spell it ('unet/down_blocks_0/resnets_0/conv1/kernel').
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

Path = tuple[str, ...]


def flatten(tree: Mapping[str, Any], prefix: Path = ()) -> dict[Path, Any]:
  """Nested mappings -> {path tuple: leaf}, in the tree's order."""
  out: dict[Path, Any] = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def unflatten(flat: Mapping[Path, Any]) -> dict[str, Any]:
  """The inverse of `flatten`: {path tuple: leaf} -> nested dicts."""
  tree: dict[str, Any] = {}
  for path, v in flat.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return tree


def path_string(path: Sequence[Any]) -> str:
  """A path of plain keys or of jax key entries (DictKey, GetAttrKey) -> 'a/b/c'."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
