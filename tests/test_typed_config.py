"""The typed checks every config and layer uses (preprocessing/typed_config.py)."""

from __future__ import annotations

import dataclasses

import pytest

from preprocessing import features
from preprocessing import typed_config


def test_one_error_type_and_wrong_types_are_type_errors_too():
  with pytest.raises(typed_config.ConfigError, match="n must be >= 1, got 0"):
    typed_config.int_value("n", 0, 1)
  with pytest.raises(typed_config.ConfigTypeError, match="n must be an int"):
    typed_config.int_value("n", True, 1)
  assert issubclass(typed_config.ConfigTypeError, typed_config.ConfigError)
  assert issubclass(typed_config.ConfigTypeError, TypeError)
  assert issubclass(typed_config.ConfigError, ValueError)


@pytest.mark.parametrize(
    "minimum, maximum, value, message",
    [
        (1, None, 0, "must be >= 1, got 0"),
        (None, 5, 6, "must be <= 5, got 6"),
        (0, 5, 6, r"must be in \[0, 5\], got 6"),
    ],
)
def test_int_bounds(minimum, maximum, value, message):
  with pytest.raises(typed_config.ConfigError, match=message):
    typed_config.int_value("n", value, minimum, maximum)
  assert typed_config.int_value("n", 3, minimum, maximum) == 3


def test_max_seq_len_is_the_registry_bound():
  bound = features.MAX_SUPPORTED_SEQ_LEN
  assert typed_config.max_seq_len_value(bound) == bound
  for bad in (0, bound + 1):
    with pytest.raises(typed_config.ConfigError, match=rf"an int in \[1, {bound}\]"):
      typed_config.max_seq_len_value(bad)
  with pytest.raises(typed_config.ConfigTypeError, match="max_seq_len"):
    typed_config.max_seq_len_value(64.0)


def test_numbers_units_paths_and_strings():
  assert typed_config.float_value("x", 1, 0.0, 2.0) == 1.0
  with pytest.raises(typed_config.ConfigError, match=r"x must be in \[0, 1\)"):
    typed_config.float_value("x", 1.0, 0.0, 1.0, high_open=True)
  with pytest.raises(typed_config.ConfigTypeError, match="x must be a float"):
    typed_config.float_value("x", "0.5", 0.0, 1.0)
  with pytest.raises(typed_config.ConfigError, match=r"r must be a number in \[0, 1\]"):
    typed_config.fraction_value("r", 1.5)
  assert typed_config.units_value("u", [4, 2], allow_empty=False) == (4, 2)
  with pytest.raises(typed_config.ConfigError, match="u must not be empty"):
    typed_config.units_value("u", (), allow_empty=False)
  with pytest.raises(typed_config.ConfigTypeError, match="u must be a sequence"):
    typed_config.units_value("u", "64", allow_empty=True)
  with pytest.raises(typed_config.ConfigError, match="p must be a non-empty path"):
    typed_config.path_value("p", "")
  assert typed_config.strings_value("s", "a*") == ("a*",)
  with pytest.raises(typed_config.ConfigTypeError, match="s must be non-empty strings"):
    typed_config.strings_value("s", ["a", ""])


@dataclasses.dataclass(frozen=True)
class _Toy(typed_config.TypedConfig):
  size: int = 2
  rate: float = 0.5
  widths: tuple[int, ...] = (8,)

  def __post_init__(self):
    typed_config.check_int(self, "size", 1)
    typed_config.check_float(self, "rate", 0.0, 1.0)
    typed_config.check_units(self, "widths", allow_empty=False)


def test_typed_config_mixin_refuses_unknown_keys_and_normalises():
  toy = _Toy.from_dict({"rate": 1, "widths": [4, 4]})
  assert toy.rate == 1.0 and isinstance(toy.rate, float)
  assert toy.widths == (4, 4)
  assert toy.to_dict() == {"size": 2, "rate": 1.0, "widths": (4, 4)}
  assert toy.replace(size=3).size == 3
  with pytest.raises(typed_config.ConfigError, match=r"unknown _Toy setting\(s\) \['sise'\]"):
    _Toy.from_dict({"sise": 3})
  with pytest.raises(typed_config.ConfigError, match="size must be >= 1"):
    toy.replace(size=0)
