"""Regenerates the Bazel BUILD file from the source tree.

One py_library per module (`preprocessing/history.py` -> `preprocessing_history`;
a package's `__init__.py` -> the package's name), one py_binary per absl entry
point (a module that calls `app.run(`), one py_test per test file. Direct
in-repo imports become deps; third-party imports (lazy ones included) become
`requirement(...)` deps. So a target pulls in only what its modules import:
`serving_client` has neither Beam nor TFX. tests/test_build.py checks the
result independently.

Usage: .venv/bin/python scripts/gen_build.py   (rewrites ./BUILD)
"""

from __future__ import annotations

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("preprocessing", "trainer", "trainer/layers", "pipeline", "serving")
SCRIPT_DIRS = ("bench",)
# Top-level import name -> requirement name in requirements.txt.
THIRD_PARTY = {
    "absl": "absl-py",
    "apache_beam": "apache-beam",
    "google": "protobuf",
    "kfp": "kfp",
    "matplotlib": "matplotlib",
    "ml_metadata": "tfx",
    "numpy": "numpy",
    "pandas": "tfx",
    "psutil": "tfx",
    "pyarrow": "pyarrow",
    "pytest": "pytest",
    "sklearn": "tfx",
    "scipy": "tfx",
    "tensorflow": "tensorflow",
    "tensorflow_data_validation": "tfx",
    "tensorflow_io": "tensorflow-io",
    "tensorflow_metadata": "tfx",
    "tensorflow_model_analysis": "tfx",
    "tensorflow_recommenders": "tensorflow-recommenders",
    "tensorflow_serving": "tensorflow-serving-api",
    "tensorflow_transform": "tfx",
    "tf_keras": "tf-keras",
    "tfx": "tfx",
    "tfx_bsl": "tfx",
    "grpc": "tensorflow-serving-api",
}
STDLIB = set(sys.stdlib_module_names)


def module_name(path: pathlib.Path) -> str:
  rel = path.relative_to(ROOT).with_suffix("")
  parts = list(rel.parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def imports_of(path: pathlib.Path) -> set[str]:
  tree = ast.parse(path.read_text(), filename=str(path))
  names: set[str] = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.add(node.module)
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
  return names


def is_entry_point(path: pathlib.Path) -> bool:
  return "app.run(" in path.read_text()


def target_name(path: pathlib.Path) -> str:
  return "_".join(path.relative_to(ROOT).with_suffix("").parts)


def main() -> None:
  libraries: dict[str, list[pathlib.Path]] = {}
  binaries: list[pathlib.Path] = []
  for package in PACKAGES:
    directory = ROOT / package
    for path in sorted(directory.glob("*.py")):
      if is_entry_point(path):
        binaries.append(path)
      elif path.name == "__init__.py":
        libraries[package.replace("/", "_")] = [path]
      else:
        libraries[target_name(path)] = [path]
  for directory in SCRIPT_DIRS:
    binaries.extend(sorted((ROOT / directory).glob("*.py")))
  tests = sorted((ROOT / "tests").glob("*.py"))

  # module -> target that provides it
  provider: dict[str, str] = {}
  for lib, paths in libraries.items():
    for path in paths:
      provider[module_name(path)] = ":" + lib
  for path in binaries:
    provider[module_name(path)] = ":" + target_name(path)
  test_helpers = [
      p for p in tests if not p.name.startswith("test_") and p.name != "pytest_main.py"
  ]
  for path in test_helpers:
    provider[module_name(path)] = ":tests_support"

  requirements = {
      line.split("==")[0].split("[")[0].split(">")[0].split("<")[0].strip()
      for line in (ROOT / "requirements.txt").read_text().splitlines()
      if line.strip() and not line.startswith("#")
  }

  def deps_for(paths: list[pathlib.Path], self_target: str) -> list[str]:
    deps: set[str] = set()
    for path in paths:
      for name in imports_of(path):
        top = name.split(".")[0]
        if name in provider:
          if provider[name] != self_target:
            deps.add(provider[name])
        elif top in THIRD_PARTY:
          requirement = THIRD_PARTY[top]
          if requirement not in requirements:
            raise SystemExit(f"{path}: {requirement} not in requirements.txt")
          deps.add(f'requirement("{requirement}")')
        elif top in STDLIB or top in ("__future__",):
          continue
        elif top in {p.replace("/", ".").split(".")[0] for p in PACKAGES} or top in ("tests", "bench"):
          if name.rsplit(".", 1)[0] in provider:
            continue  # `from pkg.mod import symbol`: covered by pkg.mod
          if name in {p.replace("/", ".") for p in PACKAGES}:
            continue  # a bare package import (`from trainer import layers`)
          raise SystemExit(f"{path}: in-repo import {name} has no target")
        else:
          raise SystemExit(f"{path}: unknown third-party import {name}; add it to THIRD_PARTY")
    local = sorted(d for d in deps if d.startswith(":"))
    external = sorted(d for d in deps if not d.startswith(":"))
    return local + external

  def rule(kind: str, name: str, srcs: list[pathlib.Path], extra: list[str], deps: list[str]) -> str:
    lines = [f"{kind}(", f'    name = "{name}",']
    lines.append("    srcs = [")
    lines += [f'        "{p.relative_to(ROOT)}",' for p in srcs]
    lines.append("    ],")
    lines += [f"    {e}," for e in extra]
    if deps:
      lines.append("    deps = [")
      lines += [f"        {d}," if d.startswith("requirement") else f'        "{d}",' for d in deps]
      lines.append("    ],")
    lines.append(")")
    return "\n".join(lines)

  out = [
      "# Bazel targets for every module, entry point and test. Generated by",
      "# scripts/gen_build.py; tests/test_build.py checks it stays true.",
      "# Third-party deps come from requirements.lock through rules_python's pip.",
      'load("@rules_python//python:defs.bzl", "py_binary", "py_library", "py_test")',
      'load("@pip//:requirements.bzl", "requirement")',
      "",
      'package(default_visibility = ["//visibility:public"])',
      "",
  ]
  for lib, paths in libraries.items():
    out.append(rule("py_library", lib, paths, ['imports = ["."]'], deps_for(paths, ":" + lib)))
    out.append("")
  for path in binaries:
    name = target_name(path)
    out.append(rule("py_binary", name, [path], [f'main = "{path.relative_to(ROOT)}"'],
                    deps_for([path], ":" + name)))
    out.append("")
  if test_helpers:
    out.append(rule("py_library", "tests_support", test_helpers, ["testonly = True"],
                    deps_for(test_helpers, ":tests_support")))
    out.append("")
  for path in tests:
    if not path.name.startswith("test_"):
      continue
    name = target_name(path)
    # pytest files have no __main__: tests/pytest_main.py runs them.
    extra = ['main = "tests/pytest_main.py"', f'args = ["$(location {path.relative_to(ROOT)})"]']
    size = '"large"' if "pytest.mark.e2e" in path.read_text() else '"medium"'
    extra.append(f"size = {size}")
    if size == '"large"':
      extra.append('tags = ["e2e"]')
    deps = deps_for([path, ROOT / "tests" / "pytest_main.py"], ":" + name)
    if test_helpers:  # conftest.py and friends: pytest loads them implicitly
      deps.append(":tests_support")
    out.append(rule("py_test", name, [path, ROOT / "tests" / "pytest_main.py"], extra, sorted(set(deps), key=lambda d: (not d.startswith(":"), d))))
    out.append("")
  (ROOT / "BUILD").write_text("\n".join(out).rstrip() + "\n")


if __name__ == "__main__":
  main()
