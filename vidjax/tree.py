"""Param trees as flat {path: leaf} dicts: the project's one flattener.

A path is a tuple of keys; `path_string` joins one with '/' as checkpoints, optimizer masks and
sharding rules spell it ('unet/down_blocks_0/resnets_0/conv1/kernel').

Two entry points, for two kinds of tree:
- `flatten` / `unflatten`: nested mappings (param trees), {path tuple: leaf} and back. Anything that
  is not a mapping is a leaf (None and lists included), so the round trip is exact.
- `flatten_pytree`: any pytree jax knows (optimizer states' NamedTuples, lists, orbax metadata trees)
  -> {'a/0/b': leaf}, for reading and comparing only: it drops None and empty containers as jax
  does, so it has no inverse.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax

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
  """A path of plain keys or of jax key entries (DictKey, GetAttrKey, SequenceKey) -> 'a/b/0/c'."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def flatten_pytree(tree: Any) -> dict[str, Any]:
  """Any pytree -> {'/'-joined path: leaf} in jax's leaf order (see the module docstring); the paths
  are those of orbax's `to_flat_dict` and jax's `keystr(path, simple=True, separator='/')`."""
  return {path_string(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
