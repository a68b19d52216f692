"""The one flattener: nested mappings round-trip exactly; any pytree reads as '/'-joined paths."""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from vidjax import tree


class _Moments(NamedTuple):  # the shape of an optax state: attributes and sequences inside a pytree
  count: int
  mu: dict


def test_flatten_round_trips_nested_mappings_and_keeps_non_mapping_leaves():
  params = {"unet": {"conv_in": {"kernel": np.ones((3, 3)), "bias": None}}, "steps": [1, 2]}
  flat = tree.flatten(params)
  assert list(flat) == [("unet", "conv_in", "kernel"), ("unet", "conv_in", "bias"), ("steps",)]
  assert tree.unflatten(flat) == {"unet": {"conv_in": {"kernel": flat[("unet", "conv_in", "kernel")], "bias": None}},
                                  "steps": [1, 2]}
  assert tree.path_string(("unet", "conv_in", "kernel")) == "unet/conv_in/kernel"


def test_flatten_pytree_names_every_kind_of_key_as_checkpoints_and_golden_files_spell_them():
  state = {"opt": (_Moments(count=3, mu={"w": 1.0}), [4.0, None, {}]), "params": {"w": 2.0}}
  assert tree.flatten_pytree(state) == {"opt/0/count": 3, "opt/0/mu/w": 1.0, "opt/1/0": 4.0, "params/w": 2.0}
  # The same strings as orbax's to_flat_dict and jax's keystr(simple=True, separator='/').
  keystrs = [jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in jax.tree_util.tree_leaves_with_path(state)]
  assert list(tree.flatten_pytree(state)) == keystrs
