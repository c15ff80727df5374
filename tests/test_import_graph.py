"""No module-level import circle anywhere in the tree.

Reads every tracked module's top-level import statements (those that run when
the module is imported: the module body, including `if`/`try` blocks, but not
imports inside functions, which run later) and looks for a strongly connected
component of more than one module. Importing `a.b.c` also runs `a/__init__.py`
and `a/b/__init__.py`, so those packages are edges too, except a module's own
enclosing packages: they are already being imported when the module runs (a
package `__init__` that re-exports its submodules is not a circle).
"""

from __future__ import annotations

import ast
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOPS = ("preprocessing", "trainer", "pipeline", "serving", "bench", "scripts", "tests")


def module_name(path: str) -> str:
  parts = list(pathlib.PurePosixPath(path).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def tracked_modules() -> dict[str, pathlib.Path]:
  listed = subprocess.run(
      ["git", "ls-files", "--", *(f"{top}/*.py" for top in TOPS)],
      cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
  return {module_name(path): ROOT / path for path in listed}


def top_level_statements(body: list[ast.stmt]):
  """Yields statements that run at import time (not those in defs/classes)."""
  for node in body:
    yield node
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      continue
    for field in ("body", "orelse", "finalbody"):
      yield from top_level_statements(getattr(node, field, []) or [])
    for handler in getattr(node, "handlers", []) or []:
      yield from top_level_statements(handler.body)


def imported_modules(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
  is_package = path.name == "__init__.py"
  package = name if is_package else name.rpartition(".")[0]
  targets: set[str] = set()
  for node in top_level_statements(ast.parse(path.read_text()).body):
    if isinstance(node, ast.Import):
      targets.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base_parts = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(base_parts + ([node.module] if node.module else []))
      else:
        base = node.module
      targets.add(base)
      # `from package import submodule` imports the submodule.
      targets.update(f"{base}.{alias.name}" for alias in node.names)
  own_packages = {".".join(name.split(".")[:end]) for end in range(1, name.count(".") + 1)}
  edges = set()
  for target in targets:
    parts = target.split(".")
    # The module itself and every enclosing package run on import.
    for end in range(1, len(parts) + 1):
      candidate = ".".join(parts[:end])
      if candidate in known and candidate != name and candidate not in own_packages:
        edges.add(candidate)
  return edges


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
  """Tarjan's algorithm; returns components of more than one module."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  found: list[list[str]] = []

  def visit(node: str) -> None:
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for nxt in sorted(graph[node]):
      if nxt not in index:
        visit(nxt)
        low[node] = min(low[node], low[nxt])
      elif nxt in on_stack:
        low[node] = min(low[node], index[nxt])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return found


def test_the_checker_finds_a_planted_circle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert strongly_connected(graph) == [["a", "b", "c"]]
  assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_the_checker_reads_nested_and_relative_imports(tmp_path):
  package = tmp_path / "pkg"
  package.mkdir()
  (package / "__init__.py").write_text("")
  source = package / "mod.py"
  source.write_text(
      "import os\n"
      "try:\n  from . import other\nexcept ImportError:\n  pass\n"
      "def later():\n  import pkg.lazy\n")
  known = {"pkg", "pkg.mod", "pkg.other", "pkg.lazy", "os"}
  assert imported_modules("pkg.mod", source, known) == {"os", "pkg.other"}


def test_no_module_level_import_circle():
  modules = tracked_modules()
  assert "trainer.tfx_trainer" in modules and "serving.client" in modules
  known = set(modules)
  graph = {name: imported_modules(name, path, known) for name, path in modules.items()}
  assert sum(len(edges) for edges in graph.values()) > len(graph)
  assert strongly_connected(graph) == []
