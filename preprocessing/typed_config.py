"""Shared pieces of the typed dataclass configs: no setting silently ignored.

Every config of the project (ingestion, ExampleGen, synthetic data, model,
training, pipeline) is a frozen dataclass built through `from_dict`, which
refuses keys that are not fields, so a typo fails loudly instead of being
dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, TypeVar

_ConfigT = TypeVar("_ConfigT")


class ConfigError(ValueError):
  """A setting is unknown or out of range."""


def from_dict(cls: type[_ConfigT], values: Mapping[str, Any], what: str) -> _ConfigT:
  """`cls(**values)`, refusing keys that are not fields of `cls`.

  Args:
    cls: a dataclass.
    values: field name -> value.
    what: how the error message names the settings ("pipeline setting(s)").
  """
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ConfigError(f"unknown {what} {unknown}; known: {sorted(known)}")
  return cls(**values)


def check_int(owner: Any, name: str, minimum: int, maximum: Optional[int] = None) -> None:
  """Raises ConfigError unless `owner.name` is an int (not a bool) in range."""
  value = getattr(owner, name)
  if isinstance(value, bool) or not isinstance(value, int):
    raise ConfigError(f"{name} must be an int, got {value!r}")
  if value < minimum or (maximum is not None and value > maximum):
    upper = "" if maximum is None else f" and <= {maximum}"
    raise ConfigError(f"{name} must be >= {minimum}{upper}, got {value}")
