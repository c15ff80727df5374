"""The TFX Transform `preprocessing_fn` (referred to by dotted path).

It calls `preprocessing.transforms.transform_features`, the same function the
trainer's input pipeline and the serving signature use, so Transform's output
is exactly what the model sees at serving. Ids are hashed into the registry's
buckets (stable across daily retrains, slot 0 = padding, every unseen id has
a slot: no vocabulary to refresh, no OOV bucket to size); sequences are
truncated to their most recent `max_seq_len` behaviours and left-padded to a
dense [B, max_seq_len] with their lengths; time gaps are log2-bucketed.

Two extra outputs serve evaluation slicing only (the model ignores them):
  * `slice_hist_length_bucket`: int64 [B], the lower edge of the history
    length interval [edge_i, edge_{i+1}) the example falls in;
  * `slice_category_id`: int64 [B], the raw candidate category id (the model's
    `category_id` is a hashed slot).

`custom_config` keys (both required; the pipeline's PipelineConfig sets
them): `max_seq_len`, `history_length_edges` (increasing ints from 0).
Unknown keys are refused.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import tensorflow as tf

from preprocessing import features
from preprocessing import transforms

_CONFIG_KEYS = frozenset({"max_seq_len", "history_length_edges"})


def history_length_bucket(
    hist_length: tf.Tensor, edges: Sequence[int]
) -> tf.Tensor:
  """int64 [B] lengths -> the lower edge of the interval holding each length."""
  edges = tuple(int(e) for e in edges)
  if not edges or edges[0] != 0 or any(b <= a for a, b in zip(edges, edges[1:])):
    raise ValueError(
        f"history_length_edges {edges!r} must be strictly increasing from 0"
    )
  edge_tensor = tf.constant(edges, tf.int64)
  index = tf.reduce_sum(
      tf.cast(hist_length[:, tf.newaxis] >= edge_tensor[tf.newaxis, 1:], tf.int64),
      axis=1,
  )
  return tf.gather(edge_tensor, index)


def parse_custom_config(custom_config: Optional[Mapping[str, Any]]) -> dict[str, Any]:
  config = dict(custom_config or {})
  unknown = sorted(set(config) - _CONFIG_KEYS)
  if unknown:
    raise ValueError(
        f"preprocessing_fn: unknown custom_config key(s) {unknown}; known: "
        f"{sorted(_CONFIG_KEYS)}"
    )
  missing = sorted(_CONFIG_KEYS - set(config))
  if missing:
    raise ValueError(f"preprocessing_fn: custom_config needs {missing}")
  config["max_seq_len"] = int(config["max_seq_len"])
  config["history_length_edges"] = tuple(int(e) for e in config["history_length_edges"])
  return config


def preprocessing_fn(
    inputs: Mapping[str, Any], custom_config: Optional[Mapping[str, Any]] = None
) -> dict[str, tf.Tensor]:
  """Raw parsed examples -> dense model features plus slicing keys.

  Args:
    inputs: as parsed by Transform with the curated schema: scalars dense
      int64 [B, 1], histories SparseTensor int64 [B, None].
    custom_config: see the module docstring.

  Returns:
    `transforms.transform_features` outputs (int64 [B] and [B, max_seq_len])
    plus `slice_hist_length_bucket` and `slice_category_id` (int64 [B]).
  """
  config = parse_custom_config(custom_config)
  # An example without behaviour types arrives as an empty row (the schema
  # marks the feature optional); transform_features counts it as pv.
  outputs = transforms.transform_features(inputs, config["max_seq_len"])
  outputs[features.SLICE_HIST_LENGTH_BUCKET] = history_length_bucket(
      outputs[transforms.HIST_LENGTH], config["history_length_edges"]
  )
  category = inputs[features.CATEGORY_ID.name]
  if isinstance(category, tf.SparseTensor):
    category = tf.sparse.to_dense(category)
  outputs[features.SLICE_CATEGORY_ID] = tf.reshape(tf.cast(category, tf.int64), [-1])
  return outputs
