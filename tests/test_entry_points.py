"""Every module of the project imports into one process.

absl flags live in one global registry: an entry point that defined its flags
at import time would collide with another one's (`--max_seq_len`,
`--data_root`) as soon as a test, a notebook or a Beam worker imported both.
"""

import importlib
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("preprocessing", "trainer", "pipeline", "serving")


def test_all_modules_import_together():
  modules = sorted(
      ".".join(path.relative_to(ROOT).with_suffix("").parts)
      for package in PACKAGES
      for path in (ROOT / package).rglob("*.py")
      if path.name != "__init__.py"
  )
  assert "pipeline.local_runner" in modules and "trainer.train" in modules
  for name in modules:
    importlib.import_module(name)
