"""The Bazel BUILD file stays true to the tree.

Bazel cannot fetch its rules offline here, so instead of building we parse
BUILD (Starlark is Python syntax) and check: every Python module, entry point
and test is in a target; every listed src exists; every ":dep" names a target;
every `requirement("x")` is in requirements.txt; every in-repo import of a
target's sources is provided by the target itself or one of its direct deps.
"Every Python module" means every one git tracks (`git ls-files`), so an
untracked scratch file in a working tree does not fail the check.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("preprocessing", "trainer", "pipeline", "serving", "bench", "tests")
IN_REPO_TOPS = {"preprocessing", "trainer", "pipeline", "serving", "bench", "tests"}


def parse_build(text: str) -> dict[str, dict]:
  """Returns target name -> {kind, srcs, deps, requirements}."""
  targets: dict[str, dict] = {}
  for node in ast.parse(text).body:
    if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
      continue
    call = node.value
    kind = getattr(call.func, "id", None)
    if kind not in ("py_library", "py_binary", "py_test"):
      continue
    fields = {kw.arg: kw.value for kw in call.keywords}
    name = ast.literal_eval(fields["name"])
    if name in targets:
      raise ValueError(f"duplicate target {name}")
    deps, requirements = [], []
    for element in getattr(fields.get("deps"), "elts", []):
      if isinstance(element, ast.Call) and getattr(element.func, "id", "") == "requirement":
        requirements.append(ast.literal_eval(element.args[0]))
      else:
        deps.append(ast.literal_eval(element))
    targets[name] = {
        "kind": kind,
        "srcs": ast.literal_eval(fields["srcs"]) if "srcs" in fields else [],
        "deps": deps,
        "requirements": requirements,
        "main": ast.literal_eval(fields["main"]) if "main" in fields else None,
    }
  return targets


def module_of(src: str) -> str:
  parts = list(pathlib.PurePosixPath(src).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def in_repo_imports(path: pathlib.Path) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.add(node.module)
      names.update(f"{node.module}.{a.name}" for a in node.names)
  return {n for n in names if n.split(".")[0] in IN_REPO_TOPS}


def requirement_names(root: pathlib.Path) -> set[str]:
  names = set()
  for line in (root / "requirements.txt").read_text().splitlines():
    line = line.split("#")[0].strip()
    if line:
      for sep in ("[", "=", ">", "<", "!", "~"):
        line = line.split(sep)[0]
      names.add(line.strip().lower())
  return names


def tree_sources(root: pathlib.Path) -> list[str]:
  """Every .py file under SOURCE_DIRS on disk (root-relative, posix)."""
  return sorted(
      path.relative_to(root).as_posix()
      for directory in SOURCE_DIRS
      for path in (root / directory).rglob("*.py")
  )


def tracked_sources(root: pathlib.Path) -> list[str]:
  """The .py files under SOURCE_DIRS that git tracks and that exist on disk."""
  command = ["git", "ls-files", "-z", "--", *SOURCE_DIRS]
  try:
    listing = subprocess.run(
        command, cwd=root, check=True, capture_output=True, text=True
    ).stdout
  except (OSError, subprocess.CalledProcessError) as error:
    detail = getattr(error, "stderr", "") or error
    raise RuntimeError(
        f"tests/test_build.py lists the modules with `{' '.join(command)}` in "
        f"{root}: it needs git on PATH and a git checkout ({str(detail).strip()})"
    ) from None
  return sorted(
      p for p in listing.split("\0") if p.endswith(".py") and (root / p).is_file()
  )


def check_build(
    text: str, root: pathlib.Path, sources: list[str] | None = None
) -> list[str]:
  """All the ways BUILD disagrees with the tree under `root`.

  Args:
    text: the BUILD file.
    root: the tree.
    sources: the modules every one of which must be in a target (default:
      every .py file under SOURCE_DIRS on disk).
  """
  problems = []
  targets = parse_build(text)
  requirements = requirement_names(root)
  provider: dict[str, set[str]] = {}
  covered = set()
  for name, target in targets.items():
    for src in target["srcs"]:
      covered.add(src)
      provider.setdefault(module_of(src), set()).add(name)
      if not (root / src).is_file():
        problems.append(f"{name}: src {src} does not exist")
    if target["main"] and target["main"] not in target["srcs"]:
      problems.append(f"{name}: main {target['main']} is not among its srcs")
    for dep in target["deps"]:
      if not dep.startswith(":") or dep[1:] not in targets:
        problems.append(f"{name}: dep {dep} is not a target in BUILD")
    for requirement in target["requirements"]:
      if requirement.lower() not in requirements:
        problems.append(f"{name}: requirement {requirement} not in requirements.txt")
  for rel in tree_sources(root) if sources is None else sources:
    if rel not in covered:
      problems.append(f"{rel} is in no target")
  for name, target in targets.items():
    visible = {name} | {d[1:] for d in target["deps"]}
    for src in target["srcs"]:
      if not (root / src).is_file():
        continue
      for imported in in_repo_imports(root / src):
        candidates = [imported, imported.rsplit(".", 1)[0]]
        owners = set().union(*(provider.get(c, set()) for c in candidates))
        if not owners:
          if imported.replace(".", "/") and (root / imported.replace(".", "/")).is_dir():
            continue  # a bare package import; its modules are checked where used
          problems.append(f"{name}: {src} imports {imported}, which no target provides")
        elif not owners & visible:
          problems.append(
              f"{name}: {src} imports {imported} from {sorted(owners)}, not a direct dep"
          )
  return problems


def test_build_matches_the_tree():
  problems = check_build((ROOT / "BUILD").read_text(), ROOT, tracked_sources(ROOT))
  assert not problems, "BUILD is out of date (run scripts/gen_build.py):\n" + "\n".join(problems)


@pytest.fixture
def toy_tree(tmp_path):
  (tmp_path / "requirements.txt").write_text("tensorflow==2.16.2\n")
  for directory in ("preprocessing", "trainer", "tests"):
    (tmp_path / directory).mkdir()
  (tmp_path / "preprocessing" / "features.py").write_text("X = 1\n")
  (tmp_path / "trainer" / "model.py").write_text(
      "import tensorflow\nfrom preprocessing import features\n"
  )
  (tmp_path / "tests" / "test_model.py").write_text("from trainer import model\n")
  return tmp_path


GOOD_BUILD = """
py_library(name = "preprocessing", srcs = ["preprocessing/features.py"])
py_library(name = "trainer", srcs = ["trainer/model.py"],
           deps = [":preprocessing", requirement("tensorflow")])
py_test(name = "tests_test_model", srcs = ["tests/test_model.py"], deps = [":trainer"])
"""


def test_checker_accepts_a_true_build(toy_tree):
  assert check_build(GOOD_BUILD, toy_tree) == []


@pytest.mark.parametrize(
    "mutation,expected",
    [
        (lambda b: b.replace(', deps = [":trainer"]', ""), "not a direct dep"),
        (lambda b: b.replace('":preprocessing", ', ""), "not a direct dep"),
        (lambda b: b.replace('"preprocessing/features.py"', '"preprocessing/gone.py"'),
         "does not exist"),
        (lambda b: b.replace('requirement("tensorflow")', 'requirement("torch")'),
         "not in requirements.txt"),
        (lambda b: b.replace('":trainer"]', '":nope"]'), "not a target"),
    ],
)
def test_checker_catches_a_false_build(toy_tree, mutation, expected):
  problems = check_build(mutation(GOOD_BUILD), toy_tree)
  assert any(expected in p for p in problems), problems


def test_checker_catches_an_uncovered_module(toy_tree):
  (toy_tree / "trainer" / "extra.py").write_text("")
  problems = check_build(GOOD_BUILD, toy_tree)
  assert "trainer/extra.py is in no target" in problems


def test_only_tracked_modules_must_be_in_a_target(toy_tree):
  for command in (["git", "init", "-q"], ["git", "add", "."]):
    subprocess.run(command, cwd=toy_tree, check=True)
  (toy_tree / "trainer" / "scratch.py").write_text("")  # untracked
  assert tracked_sources(toy_tree) == [
      "preprocessing/features.py", "tests/test_model.py", "trainer/model.py"
  ]
  assert check_build(GOOD_BUILD, toy_tree, tracked_sources(toy_tree)) == []
  subprocess.run(["git", "add", "trainer/scratch.py"], cwd=toy_tree, check=True)
  assert "trainer/scratch.py is in no target" in check_build(
      GOOD_BUILD, toy_tree, tracked_sources(toy_tree)
  )


def test_a_tree_without_git_is_a_clear_error(tmp_path):
  with pytest.raises(RuntimeError, match="needs git on PATH and a git checkout"):
    tracked_sources(tmp_path)


def transitive_requirements(targets: dict[str, dict], name: str) -> set[str]:
  """Every requirement that target `name` pulls in, through all its deps."""
  seen, todo, found = set(), [name], set()
  while todo:
    current = todo.pop()
    if current in seen:
      continue
    seen.add(current)
    found.update(targets[current]["requirements"])
    todo.extend(dep[1:] for dep in targets[current]["deps"])
  return found


def test_the_serving_client_target_pulls_in_neither_beam_nor_tfx():
  targets = parse_build((ROOT / "BUILD").read_text())
  pulled = transitive_requirements(targets, "serving_client")
  assert not pulled & {"apache-beam", "tfx", "tensorflow-io", "kfp"}, pulled
  # TensorFlow (its protos) only through the wire format's target.
  assert "tensorflow" not in transitive_requirements(targets, "serving_requests")
  assert "tensorflow" in targets["serving_transport"]["requirements"]


def test_transitive_requirements_follows_deps(toy_tree):
  targets = parse_build(GOOD_BUILD)
  assert transitive_requirements(targets, "tests_test_model") == {"tensorflow"}
  assert transitive_requirements(targets, "preprocessing") == set()
