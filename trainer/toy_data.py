"""Small raw examples in the ingestion format, with a planted long-range signal.

For tests and quick benchmarks that must not wait for the Beam ingestion job.
Each example is a dict of the raw features of `preprocessing.features`
(ids are raw int64 values, histories oldest first, strictly before the
impression), and `write_tfrecords` stores them as ingestion does (GZIP
TFRecord of tf.train.Example).

The signal: an item's category is `item_id % num_categories`; the click
probability rises with the number of behaviours in the candidate's category
that lie OUTSIDE the last `short_seq_len` positions, so a model reading the
whole history can beat one reading only the recent tail.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import numpy as np

from preprocessing import features

BASE_TIMESTAMP = 1_700_000_000


@dataclasses.dataclass(frozen=True)
class ToyDataConfig:
  """Sizes of the toy data.

  Attributes:
    num_examples: examples to generate.
    num_users: users the examples are spread over.
    num_items: distinct item ids (1..num_items).
    num_categories: categories (item_id % num_categories).
    min_history / max_history: history length range (inclusive).
    short_seq_len: the recent tail that does NOT carry the signal.
    with_behavior_types: write hist_behavior_types (MovieLens-like data has none).
    seed: numpy seed.
  """

  num_examples: int = 512
  num_users: int = 64
  num_items: int = 400
  num_categories: int = 16
  min_history: int = 0
  max_history: int = 64
  short_seq_len: int = features.SHORT_SEQ_LEN
  with_behavior_types: bool = True
  seed: int = 0


def make_examples(config: ToyDataConfig) -> list[dict[str, Any]]:
  """Raw examples (dict of ints and int lists), users interleaved."""
  rng = np.random.default_rng(config.seed)
  examples = []
  for index in range(config.num_examples):
    n = int(rng.integers(config.min_history, config.max_history + 1))
    timestamp = BASE_TIMESTAMP + index * 60
    items = rng.integers(1, config.num_items + 1, n)
    item = int(rng.integers(1, config.num_items + 1))
    category = item % config.num_categories
    old = items[: max(0, n - config.short_seq_len)]
    matches = int(np.sum(old % config.num_categories == category))
    probability = 0.1 + 0.8 * min(1.0, matches / 2.0)
    gaps = np.sort(rng.integers(1, 10**7, n))[::-1]
    example = {
        features.USER_ID.name: int(rng.integers(0, config.num_users)),
        features.ITEM_ID.name: item,
        features.CATEGORY_ID.name: category,
        features.TIMESTAMP.name: timestamp,
        features.LABEL.name: int(rng.random() < probability),
        features.HIST_ITEM_IDS.name: [int(i) for i in items],
        features.HIST_CATEGORY_IDS.name: [int(i % config.num_categories) for i in items],
        features.HIST_TIMESTAMPS.name: [int(timestamp - g) for g in gaps],
    }
    if config.with_behavior_types:
      example[features.HIST_BEHAVIOR_TYPES.name] = [
          int(t) for t in rng.integers(0, len(features.BEHAVIOR_TYPES), n)
      ]
    examples.append(example)
  return examples


def serialize(example: dict[str, Any]) -> bytes:
  """One raw example -> serialized tf.train.Example."""
  # TensorFlow (~5 s) only to serialize: make_examples needs none.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  feature = {}
  for name, value in example.items():
    values = value if isinstance(value, (list, tuple)) else [value]
    feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_tfrecords(path: str, examples: Iterable[dict[str, Any]]) -> int:
  """Writes a GZIP TFRecord file (ingestion's format); returns the count."""
  # Lazy as in serialize().
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  count = 0
  with tf.io.TFRecordWriter(path, options="GZIP") as writer:
    for example in examples:
      writer.write(serialize(example))
      count += 1
  return count
