"""The start-up check every entry point runs before it does any work.

TF 2.16 resolves `tf.keras` to Keras 3 unless `TF_USE_LEGACY_KERAS=1` is set
before TensorFlow is imported; tensorflow-recommenders and TF Transform need
Keras 2 (`tf_keras`). Which Keras a process gets can depend on import order,
so we check what is actually in effect instead of trusting the variable.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from typing import Any, Mapping, Sequence

# (distribution, required version prefix as a tuple of ints)
EXPECTED_VERSIONS: Mapping[str, Sequence[int]] = {
    "tensorflow": (2, 16),
    "tf-keras": (2, 16),
    "tfx": (1, 16, 0),
    "apache-beam": (2, 59, 0),
}


class StackMismatchError(RuntimeError):
  """The Python environment is not the one this project is pinned to."""


def parse_version(text: str) -> tuple[int, ...]:
  """'2.16.2' -> (2, 16, 2); stops at the first non-numeric part ('2.16.0rc1' -> (2, 16))."""
  parts = []
  for piece in text.split("."):
    if not piece.isdigit():
      break
    parts.append(int(piece))
  return tuple(parts)


def installed_version(distribution: str) -> tuple[int, ...] | None:
  try:
    return parse_version(importlib.metadata.version(distribution))
  except importlib.metadata.PackageNotFoundError:
    return None


def machine_info() -> dict[str, Any]:
  """What a benchmark's saved results record about the machine it ran on."""
  return {
      "cpus": os.cpu_count(),
      "processor": platform.processor() or platform.machine(),
      "tensorflow": importlib.metadata.version("tensorflow"),
      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
      # Other processes on the machine skew absolute times more than ratios.
      "load_average_1min": os.getloadavg()[0],
  }


def check_environment(
    expected: Mapping[str, Sequence[int]] = EXPECTED_VERSIONS,
    import_tensorflow: bool = True,
) -> None:
  """Raises StackMismatchError with a one-line reason when the stack is wrong.

  Args:
    expected: distribution name -> required leading version numbers.
    import_tensorflow: also import TensorFlow and check that `tf.keras` is
      Keras 2 (costs ~5 s the first time; entry points that use TF need it).
  """
  if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    raise StackMismatchError(
        "TF_USE_LEGACY_KERAS=1 must be set before Python starts (use the "
        "README's make targets, or export it)."
    )
  for distribution, prefix in expected.items():
    found = installed_version(distribution)
    if found is None:
      raise StackMismatchError(
          f"{distribution} is not installed; run `make setup`."
      )
    if tuple(found[: len(prefix)]) != tuple(prefix):
      raise StackMismatchError(
          f"{distribution} {'.'.join(map(str, found))} is installed, this "
          f"project needs {'.'.join(map(str, prefix))}.x; run `make setup`."
      )
  if import_tensorflow:
    # Only when asked: entry points without TensorFlow check in milliseconds.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    keras_module = tf.keras.Model.__module__
    if not keras_module.startswith("tf_keras."):
      raise StackMismatchError(
          f"tf.keras resolves to {keras_module.split('.')[0]} (Keras 3), this "
          "project needs Keras 2 (tf_keras): set TF_USE_LEGACY_KERAS=1 before "
          "Python starts."
      )
