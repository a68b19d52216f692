"""The layer order of vidjax/ (DESIGN.md "Layers"), checked on every import, including those inside functions.

From the bottom up; a module imports only from its own layer or below. An import inside a function
counts like one at module level (deferring an import to dodge a cycle is still a cycle).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "vidjax"

# The allowed order, bottom first: the README's module table says the same in words.
LAYERS = (
    # no model code
    ("vidjax", "errors", "tree", "interpolate", "conditioning", "diffusion", "toyworld", "data", "parallel"),
    ("models",),  # linen modules, flops
    ("sampling",),  # the one way from conditioning to frames
    ("train", "convert", "eval"),  # use models + sampling; not each other's internals
    ("pipelines",),  # the user-facing API over all of the above
    ("cli",),  # argument parsing only
)
# Within the middle layer, the only modules one package may take from another: the checkpoint
# directory format (save_pretrained / load_pretrained), which training reads and exports, and the
# JSON reading and conversion report that `vidjax convert run` (train/export.py) shares with convert,
# the toy recolouring benchmark (pure numpy over the toy world), which the toy main job scores, and
# the metrics (pure numpy reductions), whose retrieval top-1 scores the CLIP stage.
SAME_LAYER_PUBLIC = {("train", "vidjax.convert.pretrained"), ("train", "vidjax.convert.common"),
                     ("train", "vidjax.eval.toy_edit"), ("train", "vidjax.eval.metrics")}
# Never imported by the library: offline jobs, experiment configs and launchers sit on top of it.
OUTSIDE = ("data_pipelines", "configs", "launch")

_LAYER_OF = {package: index for index, packages in enumerate(LAYERS) for package in packages}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name: str, modules) -> str:
  """The longest prefix of a dotted name that is a vidjax module (`from a.b import c` may name a module c)."""
  while name not in modules and "." in name:
    name = name.rsplit(".", 1)[0]
  return name


def _imports(module: str, path: pathlib.Path, modules) -> list[tuple[str, int]]:
  """(imported name, line) for every import statement anywhere in the file."""
  found = []
  package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found += [(alias.name, node.lineno) for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: resolved against this module's package
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      found += [(f"{base}.{alias.name}" if base else alias.name, node.lineno) for alias in node.names]
  return found


def _package(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else parts[0]


def _edges():
  modules = _modules()
  edges = []
  for module, path in modules.items():
    for name, line in _imports(module, path, modules):
      top = name.split(".")[0]
      if top == "vidjax":
        target = _resolve(name, modules)
        if target != module:
          edges.append((module, target, f"{path.relative_to(ROOT.parent)}:{line}"))
      elif top in OUTSIDE:
        edges.append((module, name, f"{path.relative_to(ROOT.parent)}:{line}"))
  return modules, edges


def test_every_package_has_a_layer():
  unknown = sorted({_package(m) for m in _modules()} - set(_LAYER_OF))
  assert not unknown, f"add these vidjax packages to LAYERS (and the README's module table): {unknown}"


def test_no_upward_import_and_no_import_of_the_jobs():
  _, edges = _edges()
  bad = []
  for source, target, where in edges:
    if target.split(".")[0] in OUTSIDE:
      bad.append(f"{where}: {source} imports {target} (the library never imports {target.split('.')[0]}/)")
      continue
    a, b = _package(source), _package(target)
    if _LAYER_OF[b] > _LAYER_OF[a]:
      bad.append(f"{where}: {source} ({a}, layer {_LAYER_OF[a]}) imports {target} ({b}, layer {_LAYER_OF[b]})")
    elif _LAYER_OF[b] == _LAYER_OF[a] and a != b and LAYERS[_LAYER_OF[a]] != LAYERS[0] \
        and (a, target) not in SAME_LAYER_PUBLIC:
      bad.append(f"{where}: {source} imports {target}, another package of its layer {LAYERS[_LAYER_OF[a]]}")
  assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of a directed graph as [a, b, ..., a], or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


@pytest.mark.parametrize("level", ["module", "package"])
def test_no_import_cycle(level):
  _, edges = _edges()
  graph: dict[str, set[str]] = {}
  for source, target, _ in edges:
    if target.split(".")[0] in OUTSIDE:
      continue
    a, b = (source, target) if level == "module" else (_package(source), _package(target))
    # A package's __init__ re-exporting its own modules is not a cycle with them.
    if a != b and not (level == "module" and target.startswith(source + ".")):
      graph.setdefault(a, set()).add(b)
  cycle = _cycle(graph)
  assert cycle is None, f"import cycle between {level}s: {' -> '.join(cycle)}"


def test_the_walker_sees_imports_inside_functions(tmp_path):
  path = tmp_path / "probe.py"
  path.write_text("import os\n\ndef f():\n  from vidjax.pipelines import edit\n  return edit\n")
  names = [name for name, _ in _imports("vidjax.models.probe", path, _modules())]
  assert names == ["os", "vidjax.pipelines.edit"]
  assert _resolve("vidjax.pipelines.edit.VideoEditPipeline", _modules()) == "vidjax.pipelines.edit"
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": {"c"}}) is None
