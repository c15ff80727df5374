"""Target-aware counts over a behaviour history: how often, how recently, how.

The strongest signal in behaviour logs is "this item / this category is
already in the user's history" (bench/results/train.md): an id embedding has
to discover equality from data, a count states it. For each candidate and
each of two entities (its item slot, its category slot) and two windows (the
whole history, the last `short_seq_len` behaviours) this gives

  log1p(matches), log1p(matches that were cart), ... fav, ... buy,
  recency = (TIME_GAP_BUCKETS - smallest time-gap bucket of a match) /
            TIME_GAP_BUCKETS, 0 without a match,
  age = largest time-gap bucket of a match / TIME_GAP_BUCKETS, 0 without
        (how long ago the interest first appeared: dormant interests),

plus the share of the whole history that matches the item and the category:
`num_statistics(...)` floats in all.

One implementation for both paths: each history row is turned into sorted
keys (slot, behaviour type, time-gap bucket), and a candidate's matches are
the key range of its slot, found with `tf.searchsorted`. A batch of examples
is R rows with one candidate each; serving's `rank` is ONE row (the user's
history, sorted once) with N candidates, O(T log T + N) instead of N x T
comparisons.
"""

from __future__ import annotations

from typing import Mapping

import tensorflow as tf

from preprocessing import features
from preprocessing import transforms

# Behaviour types are stored as code + 1 (0 = padding): pv 1 .. buy 4.
_TYPE_SLOTS = len(features.BEHAVIOR_TYPES) + 1
_TYPE_FACTOR = 8  # > _TYPE_SLOTS: room in the key for every type slot
_GAP_FACTOR = 64  # > TIME_GAP_BUCKETS
_ENTITIES = (
    (features.ITEM_ID.name, features.HIST_ITEM_IDS.name),
    (features.CATEGORY_ID.name, features.HIST_CATEGORY_IDS.name),
)
# Per entity and window: total, one count per non-pv type, recency, age.
_PER_WINDOW = 1 + (len(features.BEHAVIOR_TYPES) - 1) + 2


def num_statistics() -> int:
  """Width of the statistics vector."""
  return len(_ENTITIES) * 2 * _PER_WINDOW + len(_ENTITIES)


def _window_statistics(
    candidates: Mapping[str, tf.Tensor],
    history: Mapping[str, tf.Tensor],
    mask: tf.Tensor,
) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
  """(features [R, M] per entity x statistic, match totals [R, M] per entity)."""
  types = history[features.HIST_BEHAVIOR_TYPES.name]
  gaps = history[transforms.HIST_TIME_GAP_BUCKETS]
  columns, totals = [], []
  for candidate_name, history_name in _ENTITIES:
    key = (history[history_name] * _TYPE_FACTOR + types) * _GAP_FACTOR + gaps
    # Padding sorts first and never matches a slot >= 1.
    ordered = tf.sort(tf.where(mask, key, -1), axis=-1)
    slot = candidates[candidate_name]  # [R, M]
    # Key ranges [slot, type t) for t = 1 .. _TYPE_SLOTS.
    bounds = (
        (slot[..., tf.newaxis] * _TYPE_FACTOR
         + tf.range(1, _TYPE_SLOTS + 1, dtype=tf.int64)) * _GAP_FACTOR
    )  # [R, M, _TYPE_SLOTS]
    flat_bounds = tf.reshape(bounds, [tf.shape(slot)[0], -1])
    positions = tf.reshape(
        tf.searchsorted(ordered, flat_bounds, side="left", out_type=tf.int32),
        tf.shape(bounds),
    )
    per_type = positions[..., 1:] - positions[..., :-1]  # [R, M, types]
    total = tf.reduce_sum(per_type, axis=-1)
    # The first key of each type's range holds that type's smallest gap.
    length = tf.shape(ordered)[-1]
    first = tf.gather(
        ordered, tf.minimum(tf.reshape(positions[..., :-1], [tf.shape(slot)[0], -1]),
                            length - 1),
        batch_dims=1,
    )
    first_gap = tf.reshape(first % _GAP_FACTOR, tf.shape(per_type))
    smallest_gap = tf.reduce_min(
        tf.where(per_type > 0, first_gap, features.TIME_GAP_BUCKETS), axis=-1
    )
    # ... and the last key of each range that type's largest gap (the oldest).
    last = tf.gather(
        ordered, tf.maximum(tf.reshape(positions[..., 1:], [tf.shape(slot)[0], -1]) - 1, 0),
        batch_dims=1,
    )
    last_gap = tf.reshape(last % _GAP_FACTOR, tf.shape(per_type))
    largest_gap = tf.reduce_max(tf.where(per_type > 0, last_gap, 0), axis=-1)
    as_float = lambda t: tf.cast(t, tf.float32)
    columns.append(tf.math.log1p(as_float(total)))
    for type_index in range(1, len(features.BEHAVIOR_TYPES)):
      columns.append(tf.math.log1p(as_float(per_type[..., type_index])))
    columns.append(
        as_float(features.TIME_GAP_BUCKETS - smallest_gap) / features.TIME_GAP_BUCKETS
    )
    columns.append(as_float(largest_gap) / features.TIME_GAP_BUCKETS)
    totals.append(total)
  return columns, totals


def history_statistics(
    candidates: Mapping[str, tf.Tensor],
    history: Mapping[str, tf.Tensor],
    mask: tf.Tensor,
    short_seq_len: int,
) -> tf.Tensor:
  """Target-aware statistics of candidates against their history rows.

  Args:
    candidates: `item_id`, `category_id` int64 [R, M] hashed slots (M
      candidates per history row).
    history: `hist_item_ids`, `hist_category_ids`, `hist_behavior_types`
      (type code + 1), `hist_time_gap_buckets`, int64 [R, L], left-padded
      (the most recent behaviour last).
    mask: bool [R, L], True at real behaviours.
    short_seq_len: the short window is the last short_seq_len positions.

  Returns:
    float32 [R, M, num_statistics()].
  """
  whole, totals = _window_statistics(candidates, history, mask)
  short_history = {name: values[:, -short_seq_len:] for name, values in history.items()}
  short, _ = _window_statistics(candidates, short_history, mask[:, -short_seq_len:])
  length = tf.cast(tf.reduce_sum(tf.cast(mask, tf.int32), axis=-1), tf.float32)
  shares = [
      tf.cast(total, tf.float32) / tf.maximum(length, 1.0)[:, tf.newaxis]
      for total in totals
  ]
  return tf.stack(whole + short + shares, axis=-1)
