"""absl flag parsing for the entry points: `--help` exits 0.

absl's own parser exits 1 after printing the help, so a `--help` would read
as a failure to a shell or CI. Pass one of these as `app.run(main,
flags_parser=...)`. `refuse_arguments` is the entry points' one check that
nothing but flags was given.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags

HELP_FLAGS = ("--help", "-h", "-?", "--helpfull", "--helpshort")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser of every flag in argv, except that --help exits 0."""
  return _parse(argv, known_only=False)


def parse_known_flags(argv: list[str]) -> list[str]:
  """Parses the flags this binary defines; the others (e.g. Beam's) stay in
  the returned argv. --help exits 0."""
  return _parse(argv, known_only=True)


def refuse_arguments(argv: list[str]) -> None:
  """app.UsageError when argv holds more than the program name: every entry
  point takes flags only."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")


def _parse(argv: list[str], known_only: bool) -> list[str]:
  try:
    return flags.FLAGS(argv, known_only=known_only)
  except SystemExit as done:
    if done.code == 1 and any(a in HELP_FLAGS for a in argv[1:]):
      sys.exit(0)
    raise
