"""The typed checks of every config and layer: no setting silently ignored.

Every config of the project (ingestion, ExampleGen, synthetic data, model,
training, pipeline) is a frozen dataclass built through `from_dict`, which
refuses keys that are not fields, so a typo fails loudly instead of being
dropped. Its `__post_init__` and the layers' constructors check values with
the functions below, which all raise `ConfigError` (a ValueError; a value of
the wrong type raises its subclass `ConfigTypeError`, also a TypeError).

Two forms of each check: `*_value(name, value, ...)` checks a value and
returns it (normalised: a float, a tuple); `check_*(owner, name, ...)` checks
the attribute `name` of a frozen dataclass and stores the normalised value.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, Optional, Sequence, TypeVar

from preprocessing import features

_ConfigT = TypeVar("_ConfigT")


class ConfigError(ValueError):
  """A setting is unknown, of the wrong type or out of range."""


class ConfigTypeError(ConfigError, TypeError):
  """A setting of the wrong type (a TypeError too, as Python's own are)."""


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


class TypedConfig:
  """`from_dict`, `to_dict` and `replace` of a frozen config dataclass.

  `settings_name` is how an unknown-key error names the settings; the
  default is "<ClassName> setting(s)".
  """

  settings_name: ClassVar[Optional[str]] = None

  @classmethod
  def from_dict(cls: type[_ConfigT], values: Mapping[str, Any]) -> _ConfigT:
    """Builds a config, refusing keys that are not fields (typos)."""
    what = cls.settings_name or f"{cls.__name__} setting(s)"  # type: ignore[attr-defined]
    return from_dict(cls, values, what)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)  # type: ignore[call-overload]

  def replace(self: _ConfigT, **changes: Any) -> _ConfigT:
    return self.from_dict({**self.to_dict(), **changes})  # type: ignore[attr-defined]


def int_value(
    name: str, value: Any, minimum: Optional[int] = None, maximum: Optional[int] = None
) -> int:
  """`value` if it is an int (not a bool) in [minimum, maximum] (None: unbounded)."""
  if isinstance(value, bool) or not isinstance(value, int):
    raise ConfigTypeError(f"{name} must be an int, got {value!r}")
  if (minimum is not None and value < minimum) or (
      maximum is not None and value > maximum
  ):
    if maximum is None:
      bound = f">= {minimum}"
    elif minimum is None:
      bound = f"<= {maximum}"
    else:
      bound = f"in [{minimum}, {maximum}]"
    raise ConfigError(f"{name} must be {bound}, got {value}")
  return value


def max_seq_len_value(value: Any, name: str = "max_seq_len") -> int:
  """A history length: an int in [1, features.MAX_SUPPORTED_SEQ_LEN], the
  one check of that bound (configs, transforms, the serving client)."""
  is_int = isinstance(value, int) and not isinstance(value, bool)
  if not is_int or not 1 <= value <= features.MAX_SUPPORTED_SEQ_LEN:
    error = ConfigError if is_int else ConfigTypeError
    raise error(
        f"{name} must be an int in [1, {features.MAX_SUPPORTED_SEQ_LEN}], got {value!r}"
    )
  return value


def float_value(
    name: str, value: Any, low: float, high: float, high_open: bool = False
) -> float:
  """`float(value)` if it is a number (not a bool) in [low, high] (or
  [low, high) with `high_open`)."""
  return _number(name, value, low, high, high_open, "a float", "in")


def fraction_value(name: str, value: Any, high_open: bool = False) -> float:
  """A ratio or probability: `float_value` in [0, 1] (or [0, 1))."""
  return _number(name, value, 0.0, 1.0, high_open, "a number in", "a number in")


def _number(name, value, low, high, high_open, type_words, range_words) -> float:
  interval = f"[{low:g}, {high:g}{')' if high_open else ']'}"
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    where = f" {interval}" if type_words.endswith(" in") else ""
    raise ConfigTypeError(f"{name} must be {type_words}{where}, got {value!r}")
  if not low <= value <= high or (high_open and value == high):
    raise ConfigError(f"{name} must be {range_words} {interval}, got {value!r}")
  return float(value)


def bool_value(name: str, value: Any) -> bool:
  if not isinstance(value, bool):
    raise ConfigTypeError(f"{name} must be a bool, got {value!r}")
  return value


def units_value(name: str, value: Any, allow_empty: bool) -> tuple[int, ...]:
  """Layer widths: a sequence of positive ints, as a tuple."""
  if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
    raise ConfigTypeError(f"{name} must be a sequence of ints, got {value!r}")
  units = tuple(value)
  if not units and not allow_empty:
    raise ConfigError(f"{name} must not be empty")
  if any(isinstance(u, bool) or not isinstance(u, int) or u < 1 for u in units):
    raise ConfigError(f"{name} must be positive ints, got {value!r}")
  return units


def path_value(name: str, value: Any) -> str:
  """A path or URI: a non-empty string."""
  if not isinstance(value, str) or not value:
    raise ConfigError(f"{name} must be a non-empty path")
  return value


def strings_value(name: str, value: Any) -> tuple[str, ...]:
  """One non-empty string or a sequence of them, as a tuple."""
  if isinstance(value, str):
    value = (value,)
  value = tuple(value)
  if not all(isinstance(v, str) and v for v in value):
    raise ConfigTypeError(f"{name} must be non-empty strings, got {value!r}")
  return value


def check_int(
    owner: Any, name: str, minimum: Optional[int] = None, maximum: Optional[int] = None
) -> None:
  """`int_value` of the attribute `name` of `owner`."""
  int_value(name, getattr(owner, name), minimum, maximum)


def check_max_seq_len(owner: Any, name: str = "max_seq_len") -> None:
  max_seq_len_value(getattr(owner, name), name)


def check_float(
    owner: Any, name: str, low: float, high: float, high_open: bool = False
) -> None:
  """`float_value` of `owner.name`, stored back as a float."""
  _store(owner, name, float_value(name, getattr(owner, name), low, high, high_open))


def check_bool(owner: Any, *names: str) -> None:
  for name in names:
    bool_value(name, getattr(owner, name))


def check_units(owner: Any, name: str, allow_empty: bool) -> None:
  """`units_value` of `owner.name`, stored back as a tuple."""
  _store(owner, name, units_value(name, getattr(owner, name), allow_empty))


def check_field_types(owner: Any) -> None:
  """Each int, float and str field of a dataclass holds its annotated type
  (an int is a float; a bool is neither)."""
  for field in dataclasses.fields(owner):
    value = getattr(owner, field.name)
    expected = {"float": float, "str": str}.get(str(field.type), int)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
      continue
    if not isinstance(value, expected) or isinstance(value, bool):
      raise ConfigTypeError(
          f"{field.name} must be {expected.__name__}, got {value!r}")


def _store(owner: Any, name: str, value: Any) -> None:
  # Frozen dataclasses: normalised values go in through object.__setattr__.
  object.__setattr__(owner, name, value)
