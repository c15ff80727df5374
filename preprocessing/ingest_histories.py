"""Ingestion, stage 2 (Beam): behaviours + impressions -> point-in-time
long-sequence examples.

`BuildExamples` keys events by user, sorts them by time and emits one
serialized `tf.train.Example` per impression (features per
`preprocessing.features`), split by time into train and eval.

Point-in-time rule (`preprocessing.history`, shared with the serving
client): an impression at second t gets the user's behaviours with timestamp
strictly less than t (a behaviour in the same second is excluded), oldest
first, the most recent `max_seq_len` of them. Behaviours in the same second
are ordered by (item_id, category_id, behavior_type), so the history, its
truncation and every output are deterministic whatever the runner or the
input order. An impression whose full history is shorter than `min_history` is
skipped and counted (``impressions_below_min_history``).

Memory and hot keys. A user's events are not grouped under one key: they are
keyed by (user, time chunk) with `chunk_seconds` (default one UTC day), so a
giant user's examples are produced by as many parallel tasks as the user has
active days. Each chunk needs the behaviours before it; only the last
`max_seq_len` of those can appear in a history, so every chunk sends its tail
(at most `max_seq_len` behaviours) to a per-user step that hands each chunk the
`max_seq_len` behaviours preceding it (its "carry-in"). A chunk then holds its
own behaviours plus at most `max_seq_len` more as one sorted int64 array (32
bytes a behaviour) and each history is a slice of it found by binary search:
no copy beyond the output itself. Limits: one user's behaviours within one
chunk are one task's memory (a user with 1M behaviours in a day needs ~32 MB
for them, fine; a smaller `chunk_seconds` helps beyond that), and the per-user
carry-in step holds that user's chunk tails, at most (active chunks x
max_seq_len) behaviours: 1,000 active days at max_seq_len 1024 is ~33 MB.

Time split: eval is the impressions of the last `eval_days` UTC days, counted
back from the UTC day of the latest impression (or from a given
`eval_start_timestamp`); train is every impression before. Every eval
impression is strictly later than every train impression.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from typing import Iterable, Optional

import apache_beam as beam
import numpy as np

from preprocessing import features
from preprocessing import history as history_rule
from preprocessing import ingest_parse
from preprocessing import typed_config


# Columns of a sorted behaviour array [n, 4] (int64): the history rule's.
_TS, _ITEM, _CATEGORY, _TYPE = (
    history_rule.TS, history_rule.ITEM, history_rule.CATEGORY, history_rule.TYPE
)
_NUM_COLUMNS = history_rule.NUM_COLUMNS

# Keys of the (name, count) statistics the transforms emit.
STAT_IMPRESSIONS = "impressions"
STAT_IMPRESSIONS_OUTSIDE_WINDOW = "impressions_outside_window"
STAT_BELOW_MIN_HISTORY = "impressions_below_min_history"
STAT_EXAMPLES_TRAIN = "examples_train"
STAT_EXAMPLES_EVAL = "examples_eval"
STAT_POSITIVES_TRAIN = "positives_train"
STAT_POSITIVES_EVAL = "positives_eval"
STAT_HISTORY_POSITIONS = "history_positions"
STAT_NEGATIVES_SAMPLED = "negatives_sampled"
STAT_NEGATIVES_UNAVAILABLE = "negatives_unavailable"
STAT_NAMES: tuple[str, ...] = (
    STAT_IMPRESSIONS,
    STAT_IMPRESSIONS_OUTSIDE_WINDOW,
    STAT_BELOW_MIN_HISTORY,
    STAT_EXAMPLES_TRAIN,
    STAT_EXAMPLES_EVAL,
    STAT_POSITIVES_TRAIN,
    STAT_POSITIVES_EVAL,
    STAT_HISTORY_POSITIONS,
    STAT_NEGATIVES_SAMPLED,
    STAT_NEGATIVES_UNAVAILABLE,
)

TRAIN = "train"
EVAL = "eval"


@dataclasses.dataclass(frozen=True)
class SequenceConfig:
  """Settings of `BuildExamples`.

  Attributes:
    max_seq_len: longest history kept (the most recent behaviours).
    min_history: impressions with fewer earlier behaviours are skipped.
    eval_days: the last this many UTC days of impressions are eval.
    chunk_seconds: time chunk of the (user, chunk) keys (hot-key splitting).
    with_behavior_types: write `hist_behavior_types` (False for MovieLens).
    eval_start_timestamp: first second of eval; None: from the latest
      impression and `eval_days`.
    impression_start_timestamp: impressions before it are not examples
      (their behaviours still feed later histories); None: no bound.
    impression_end_timestamp: impressions at or after it are not examples.
  """

  max_seq_len: int = features.DEFAULT_MAX_SEQ_LEN
  min_history: int = 1
  eval_days: int = 1
  chunk_seconds: int = features.SECONDS_PER_DAY
  with_behavior_types: bool = True
  eval_start_timestamp: Optional[int] = None
  impression_start_timestamp: Optional[int] = None
  impression_end_timestamp: Optional[int] = None

  def __post_init__(self):
    typed_config.check_max_seq_len(self)
    typed_config.check_int(self, "min_history", 0, self.max_seq_len)
    typed_config.check_int(self, "eval_days", 1)
    typed_config.check_int(self, "chunk_seconds", 1)
    typed_config.check_bool(self, "with_behavior_types")
    for name in (
        "eval_start_timestamp",
        "impression_start_timestamp",
        "impression_end_timestamp",
    ):
      if getattr(self, name) is not None:
        typed_config.check_int(self, name, 0)


def eval_start_for(max_impression_timestamp: int, eval_days: int) -> int:
  """First second of the last `eval_days` UTC days ending on the latest's day."""
  last_day_start = max_impression_timestamp - (
      max_impression_timestamp % features.SECONDS_PER_DAY
  )
  return last_day_start - (eval_days - 1) * features.SECONDS_PER_DAY


def _as_rows(values: Iterable[tuple[int, ...]], width: int) -> np.ndarray:
  rows = np.array(list(values), dtype=np.int64)
  return rows.reshape(-1, width)


class _ExampleEncoder:
  """Serializes one example to `tf.train.Example` bytes.

  Imports TensorFlow's proto module on first use so that building the
  pipeline in a light process does not import TensorFlow.
  """

  def __init__(self, with_behavior_types: bool):
    # Lazy: see the class docstring.
    from tensorflow.core.example import example_pb2  # pylint: disable=g-import-not-at-top

    self._example_pb2 = example_pb2
    self._with_behavior_types = with_behavior_types

  def encode(
      self,
      user_id: int,
      item_id: int,
      category_id: int,
      timestamp: int,
      label: int,
      history: np.ndarray,
  ) -> bytes:
    example = self._example_pb2.Example()
    feature = example.features.feature
    feature[features.USER_ID.name].int64_list.value.append(user_id)
    feature[features.ITEM_ID.name].int64_list.value.append(item_id)
    feature[features.CATEGORY_ID.name].int64_list.value.append(category_id)
    feature[features.TIMESTAMP.name].int64_list.value.append(timestamp)
    feature[features.LABEL.name].int64_list.value.append(label)
    # An empty history still writes the (empty) lists: the schema sees them.
    feature[features.HIST_ITEM_IDS.name].int64_list.value.extend(
        history[:, _ITEM].tolist()
    )
    feature[features.HIST_CATEGORY_IDS.name].int64_list.value.extend(
        history[:, _CATEGORY].tolist()
    )
    feature[features.HIST_TIMESTAMPS.name].int64_list.value.extend(
        history[:, _TS].tolist()
    )
    if self._with_behavior_types:
      feature[features.HIST_BEHAVIOR_TYPES.name].int64_list.value.extend(
          history[:, _TYPE].tolist()
      )
    return example.SerializeToString()


class _SortChunk(beam.DoFn):
  """(user, chunk) -> sorted behaviours (if the chunk has impressions) + tail."""

  TAIL = "tail"

  def __init__(self, max_seq_len: int):
    self._max_seq_len = max_seq_len

  def process(self, element):
    (user_id, chunk), grouped = element
    behaviors = history_rule.sort_behaviors(
        history_rule.as_array(grouped["behaviors"])
    )
    impressions = _as_rows(grouped["impressions"], 4)
    has_impressions = len(impressions) > 0
    tail = history_rule.most_recent(behaviors, self._max_seq_len)
    yield beam.pvalue.TaggedOutput(
        self.TAIL, (user_id, (chunk, tail, has_impressions))
    )
    if has_impressions:
      yield (user_id, chunk), (behaviors, impressions)


class _CarryIn(beam.DoFn):
  """user -> for each chunk with impressions, the behaviours just before it."""

  def __init__(self, max_seq_len: int):
    self._max_seq_len = max_seq_len

  def process(self, element):
    user_id, tails = element
    running = np.zeros((0, _NUM_COLUMNS), dtype=np.int64)
    for chunk, tail, has_impressions in sorted(tails, key=lambda t: t[0]):
      if has_impressions:
        yield (user_id, chunk), running
      if len(tail):
        running = history_rule.most_recent(
            np.concatenate([running, tail]), self._max_seq_len
        )


class _EmitExamples(beam.DoFn):
  """(user, chunk) with its behaviours and carry-in -> serialized examples."""

  STATS = "stats"

  def __init__(self, config: SequenceConfig):
    self._config = config
    self._encoder = None
    self._examples = {
        TRAIN: beam.metrics.Metrics.counter(ingest_parse.METRICS_NAMESPACE, STAT_EXAMPLES_TRAIN),
        EVAL: beam.metrics.Metrics.counter(ingest_parse.METRICS_NAMESPACE, STAT_EXAMPLES_EVAL),
    }

  def setup(self):
    self._encoder = _ExampleEncoder(self._config.with_behavior_types)

  def process(self, element, eval_start):
    (user_id, _), grouped = element
    (behaviors, impressions), = grouped["chunk"]
    (carry_in,) = grouped["carry_in"]
    # Carry-in behaviours all precede the chunk, so the concatenation is sorted.
    history = np.concatenate([carry_in, behaviors]) if len(carry_in) else behaviors
    impressions = impressions[np.lexsort(impressions.T[::-1])]
    starts, ends = history_rule.window_bounds(
        history[:, _TS], impressions[:, 0], self._config.max_seq_len
    )
    counts = dict.fromkeys(
        (STAT_BELOW_MIN_HISTORY, STAT_EXAMPLES_TRAIN, STAT_EXAMPLES_EVAL,
         STAT_POSITIVES_TRAIN, STAT_POSITIVES_EVAL, STAT_HISTORY_POSITIONS),
        0,
    )
    for (timestamp, item_id, category_id, label), start, end in zip(
        impressions.tolist(), starts.tolist(), ends.tolist()
    ):
      # `end` counts behaviours strictly before `timestamp` only up to the
      # carry-in's cap; min_history <= max_seq_len keeps the test exact.
      if end < self._config.min_history:
        counts[STAT_BELOW_MIN_HISTORY] += 1
        continue
      window = history[start:end]
      split = EVAL if eval_start is not None and timestamp >= eval_start else TRAIN
      counts[f"examples_{split}"] += 1
      counts[f"positives_{split}"] += label
      counts[STAT_HISTORY_POSITIONS] += len(window)
      self._examples[split].inc()
      yield beam.pvalue.TaggedOutput(
          split,
          self._encoder.encode(
              user_id, item_id, category_id, timestamp, label, window
          ),
      )
    for name, count in counts.items():
      if count:
        yield beam.pvalue.TaggedOutput(self.STATS, (name, count))


class BuildExamples(beam.PTransform):
  """{'behaviors': PCollection[Behavior], 'impressions': PCollection[Impression]}
  -> {'train': PCollection[bytes], 'eval': PCollection[bytes],
      'stats': PCollection[(name, int)], 'eval_start': PCollection[int|None]}.

  The bytes are serialized `tf.train.Example`s; 'stats' are partial counts
  to sum per name (see STAT_NAMES); 'eval_start' has one element.
  """

  def __init__(self, config: SequenceConfig):
    super().__init__()
    self._config = config

  def expand(self, inputs):
    config = self._config
    chunk_seconds = config.chunk_seconds
    start = config.impression_start_timestamp
    end = config.impression_end_timestamp

    def in_window(impression: ingest_parse.Impression) -> bool:
      return (start is None or impression.timestamp >= start) and (
          end is None or impression.timestamp < end
      )

    impressions = inputs["impressions"] | "SplitWindow" >> beam.Partition(
        lambda impression, _: 0 if in_window(impression) else 1, 2
    )
    kept, outside = impressions[0], impressions[1]

    if config.eval_start_timestamp is not None:
      eval_start = kept.pipeline | "EvalStart" >> beam.Create(
          [config.eval_start_timestamp]
      )
    else:
      eval_days = config.eval_days
      eval_start = (
          kept
          | "ImpressionTimestamps" >> beam.Map(lambda i: i.timestamp)
          | "LatestImpression" >> beam.CombineGlobally(
              lambda stamps: max(stamps, default=None)
          )
          | "EvalStartFromLatest" >> beam.Map(
              lambda latest: None
              if latest is None
              else eval_start_for(latest, eval_days)
          )
      )

    keyed_behaviors = inputs["behaviors"] | "KeyBehaviors" >> beam.Map(
        lambda b: (
            (b.user_id, b.timestamp // chunk_seconds), history_rule.row_of(b)
        )
    )
    keyed_impressions = kept | "KeyImpressions" >> beam.Map(
        lambda i: (
            (i.user_id, i.timestamp // chunk_seconds),
            (i.timestamp, i.item_id, i.category_id, i.label),
        )
    )
    chunks = (
        {"behaviors": keyed_behaviors, "impressions": keyed_impressions}
        | "GroupByUserChunk" >> beam.CoGroupByKey()
        | "SortChunks" >> beam.ParDo(_SortChunk(config.max_seq_len)).with_outputs(
            _SortChunk.TAIL, main="chunk"
        )
    )
    carry_in = (
        chunks[_SortChunk.TAIL]
        | "GroupTailsByUser" >> beam.GroupByKey()
        | "CarryIn" >> beam.ParDo(_CarryIn(config.max_seq_len))
    )
    emitted = (
        {"chunk": chunks["chunk"], "carry_in": carry_in}
        | "JoinCarryIn" >> beam.CoGroupByKey()
        | "EmitExamples" >> beam.ParDo(
            _EmitExamples(config), beam.pvalue.AsSingleton(eval_start)
        ).with_outputs(TRAIN, EVAL, _EmitExamples.STATS)
    )
    window_stats = (
        (kept | "CountImpressions" >> beam.Map(lambda _: STAT_IMPRESSIONS)),
        (outside | "CountOutside" >> beam.Map(
            lambda _: STAT_IMPRESSIONS_OUTSIDE_WINDOW
        )),
    ) | "FlattenWindowStats" >> beam.Flatten()
    stats = (
        emitted[_EmitExamples.STATS],
        window_stats | "CountWindowStats" >> beam.combiners.Count.PerElement(),
    ) | "FlattenStats" >> beam.Flatten()
    return {
        TRAIN: emitted[TRAIN],
        EVAL: emitted[EVAL],
        "stats": stats,
        "eval_start": eval_start,
    }


# ----------------------------------------------------------------------------
# Negative sampling (behaviour format).


def _hash64(*values: int) -> int:
  packed = struct.pack(f"<{len(values)}q", *values)
  return int.from_bytes(hashlib.blake2b(packed, digest_size=8).digest(), "little")


def sample_negative_items(
    catalogue_items: np.ndarray,
    positive: ingest_parse.Impression,
    neg_per_pos: int,
    seed: int,
) -> list[int]:
  """Indices into the sorted `catalogue_items` of the positive's negatives.

  Draw j is `blake2b(seed, user, timestamp, item, j) mod (catalogue size - 1)`
  over the catalogue without the positive item: seeded per example, so the
  result depends on nothing but these values; never the positive item;
  drawn with replacement. Empty when the catalogue has no other item.
  """
  size = len(catalogue_items)
  position = int(np.searchsorted(catalogue_items, positive.item_id))
  present = position < size and catalogue_items[position] == positive.item_id
  choices = size - int(present)
  if choices <= 0:
    return []
  picks = []
  for draw in range(neg_per_pos):
    index = _hash64(
        seed, positive.user_id, positive.timestamp, positive.item_id, draw
    ) % choices
    if present and index >= position:
      index += 1
    picks.append(index)
  return picks


class _SampleNegatives(beam.DoFn):

  STATS = "stats"

  def __init__(self, neg_per_pos: int, seed: int):
    self._neg_per_pos = neg_per_pos
    self._seed = seed

  def process(self, positive, catalogue):
    items, categories = catalogue
    yield positive
    picks = sample_negative_items(items, positive, self._neg_per_pos, self._seed)
    if self._neg_per_pos and not picks:
      yield beam.pvalue.TaggedOutput(self.STATS, STAT_NEGATIVES_UNAVAILABLE)
    for index in picks:
      yield ingest_parse.Impression(
          positive.user_id, int(items[index]), int(categories[index]),
          positive.timestamp, 0,
      )
      yield beam.pvalue.TaggedOutput(self.STATS, STAT_NEGATIVES_SAMPLED)


MAX_NEG_PER_POS = 1000


def check_sampling_settings(neg_per_pos: int, seed: int) -> None:
  """Raises for a negative count, an absurd count or a seed outside int64."""
  typed_config.int_value("neg_per_pos", neg_per_pos, 0, MAX_NEG_PER_POS)
  typed_config.int_value("seed", seed, 0, (1 << 63) - 1)


def _catalogue_arrays(pairs: Iterable[tuple[int, int]]):
  rows = sorted(pairs)
  items = np.array([item for item, _ in rows], dtype=np.int64)
  categories = np.array([category for _, category in rows], dtype=np.int64)
  return items, categories


class SampleNegatives(beam.PTransform):
  """{'positives': PCollection[Impression], 'behaviors': PCollection[Behavior]}
  -> {'impressions': positives + negatives, 'stats': PCollection[(name, int)]}.

  The catalogue is every item of the behaviours with its category (the
  smallest category id when the log gives an item several), a side input.
  A negative copies the positive's user and timestamp, so it gets the same
  history.
  """

  def __init__(self, neg_per_pos: int, seed: int):
    super().__init__()
    check_sampling_settings(neg_per_pos, seed)
    self._neg_per_pos = neg_per_pos
    self._seed = seed

  def expand(self, inputs):
    catalogue = (
        inputs["behaviors"]
        | "ItemCategory" >> beam.Map(lambda b: (b.item_id, b.category_id))
        | "OneCategoryPerItem" >> beam.CombinePerKey(min)
        | "CatalogueList" >> beam.combiners.ToList()
        | "CatalogueArrays" >> beam.Map(_catalogue_arrays)
    )
    sampled = inputs["positives"] | "Sample" >> beam.ParDo(
        _SampleNegatives(self._neg_per_pos, self._seed),
        beam.pvalue.AsSingleton(catalogue),
    ).with_outputs(_SampleNegatives.STATS, main="impressions")
    stats = sampled[_SampleNegatives.STATS] | "CountSampling" >> (
        beam.combiners.Count.PerElement()
    )
    return {"impressions": sampled["impressions"], "stats": stats}
