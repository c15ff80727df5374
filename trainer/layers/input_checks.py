"""The input checks the attention layers share (static shapes and dtypes).

Each raises ValueError with the same message in every layer, before any
TensorFlow op runs, so a wrong call fails at trace time with a clear cause.
"""

from __future__ import annotations

import tensorflow as tf


def check_bool_mask(mask: tf.Tensor) -> None:
  if mask.dtype != tf.bool:
    raise ValueError(f"mask must be bool, got {mask.dtype.name}.")


def check_same_width(query: tf.Tensor, keys: tf.Tensor) -> None:
  """The query and the keys end in the same width D (they are compared)."""
  if keys.shape[-1] != query.shape[-1]:
    raise ValueError(
        f"query and keys need the same width D: keys width {keys.shape[-1]}, "
        f"query width {query.shape[-1]}."
    )
