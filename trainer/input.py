"""Input pipelines of the trainer.

Two sources, one set of features:
  * `make_dataset`: the ingestion output (GZIP TFRecords of raw
    `tf.train.Example`) -> `tf.io.parse_example` -> the shared
    `preprocessing.transforms.transform_features`. Used by the standalone
    trainer and the benchmarks.
  * `make_transformed_dataset`: TFX Transform's output, already transformed,
    read through `fn_args.data_accessor` with the transformed schema. Used by
    `run_fn`.
Both yield (features dict, label int64 [B]) batches, and both can keep only
the examples of a time range (`TimeRange`, by the impression `timestamp`):
early stopping holds out the newest training days that way. `count_days` /
`count_transformed_days` say how many examples each UTC day holds.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from preprocessing import feature_spec
from preprocessing import features
from preprocessing import transforms


# Serialized records parsed together when only the timestamp is needed.
_TIMESTAMP_BATCH = 1024


@dataclasses.dataclass(frozen=True)
class TimeRange:
  """Examples with start <= timestamp < end (Unix seconds; None = unbounded)."""

  start: Optional[int] = None
  end: Optional[int] = None

  def mask(self, timestamps: tf.Tensor) -> tf.Tensor:
    keep = tf.ones_like(timestamps, dtype=tf.bool)
    if self.start is not None:
      keep &= timestamps >= tf.constant(self.start, tf.int64)
    if self.end is not None:
      keep &= timestamps < tf.constant(self.end, tf.int64)
    return keep


def _day_counts(timestamp_batches) -> dict[int, int]:
  """int64 timestamp batches -> {UTC day number (days since 1970-01-01): examples}."""
  counts: dict[int, int] = {}
  for timestamps in timestamp_batches:
    days, n = np.unique(np.asarray(timestamps).reshape(-1) // features.SECONDS_PER_DAY,
                        return_counts=True)
    for day, count in zip(days.tolist(), n.tolist()):
      counts[day] = counts.get(day, 0) + count
  return dict(sorted(counts.items()))


def parse_and_transform(
    serialized: tf.Tensor, max_seq_len: int, include_label: bool = True
) -> dict[str, tf.Tensor]:
  """Serialized raw tf.Examples [B] -> `transform_features` outputs."""
  parsed = tf.io.parse_example(serialized, feature_spec.raw_feature_spec(include_label))
  return transforms.transform_features(parsed, max_seq_len)


def _split_label(batch: dict[str, tf.Tensor]):
  batch = dict(batch)
  label = batch.pop(features.LABEL_KEY)
  return batch, tf.reshape(label, [-1])


def list_files(file_pattern: str | list[str]) -> list[str]:
  """Glob(s) -> sorted file list; a pattern matching nothing is an error."""
  patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
  files = []
  for pattern in patterns:
    matched = sorted(tf.io.gfile.glob(pattern))
    if not matched:
      raise FileNotFoundError(f"no files match {pattern!r}")
    files.extend(matched)
  return files


def _records(files: list[str]) -> tuple[tf.data.Dataset, str]:
  compression = "GZIP" if all(f.endswith(".gz") for f in files) else ""
  if compression == "" and any(f.endswith(".gz") for f in files):
    raise ValueError("file patterns mix GZIP (.gz) and uncompressed files")
  return tf.data.Dataset.from_tensor_slices(files), compression


def _timestamps(serialized: tf.Tensor) -> tf.Tensor:
  name = features.TIMESTAMP.name
  spec = {name: feature_spec.raw_feature_spec()[name]}
  return tf.io.parse_example(serialized, spec)[name]


def count_days(file_pattern: str | list[str]) -> dict[int, int]:
  """Examples per UTC day (by `timestamp`) of ingestion TFRecords, one pass."""
  files = list_files(file_pattern)
  _, compression = _records(files)
  dataset = tf.data.TFRecordDataset(files, compression_type=compression)
  dataset = dataset.batch(_TIMESTAMP_BATCH).map(_timestamps, num_parallel_calls=tf.data.AUTOTUNE)
  return _day_counts(batch.numpy() for batch in dataset)


def make_dataset(
    file_pattern: str | list[str],
    batch_size: int,
    max_seq_len: int,
    training: bool,
    shuffle_buffer: int = 10_000,
    seed: Optional[int] = None,
    time_range: Optional[TimeRange] = None,
) -> tf.data.Dataset:
  """Ingestion TFRecords -> batches of (transformed features, label).

  Args:
    file_pattern: glob(s) of `*.tfrecord.gz` (GZIP) or uncompressed files.
    batch_size: examples per batch.
    max_seq_len: static history length of the outputs.
    training: shuffle (files and examples), repeat forever and drop the last
      partial batch; otherwise read once in file order, keeping every example.
    shuffle_buffer: examples in the shuffle buffer (training).
    seed: shuffle seed (training).
    time_range: keep only the examples whose timestamp lies in it (None: all).
  """
  files = list_files(file_pattern)
  dataset, compression = _records(files)
  if training:
    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  dataset = dataset.interleave(
      lambda path: tf.data.TFRecordDataset(path, compression_type=compression),
      cycle_length=min(4, len(files)),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=not training,
  )
  if time_range is not None:
    # Filtered before batching so that batches stay full; the timestamps of
    # a block of records are parsed together (cheaper than one by one).
    dataset = dataset.batch(_TIMESTAMP_BATCH).map(
        lambda serialized: tf.boolean_mask(serialized, time_range.mask(_timestamps(serialized))),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training,
    ).unbatch()
  if training:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed).repeat()
  dataset = dataset.batch(batch_size, drop_remainder=training)
  dataset = dataset.map(
      lambda serialized: _split_label(parse_and_transform(serialized, max_seq_len)),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=not training,
  )
  return dataset.prefetch(tf.data.AUTOTUNE)


def count_transformed_days(
    file_pattern: list[str], data_accessor: Any, tf_transform_output: Any
) -> dict[int, int]:
  """Examples per UTC day of Transform's output (its `timestamp`), one pass."""
  # tfx_bsl (Arrow and Beam, seconds) only for TFX's Transform output; the
  # standalone trainer's input needs none.
  from tfx_bsl.public import tfxio  # pylint: disable=g-import-not-at-top

  schema = _timestamp_schema(tf_transform_output.transformed_metadata.schema)
  dataset = data_accessor.tf_dataset_factory(
      file_pattern,
      tfxio.TensorFlowDatasetOptions(
          batch_size=_TIMESTAMP_BATCH, shuffle=False, num_epochs=1, drop_final_batch=False
      ),
      schema,
  )
  return _day_counts(
      tf.reshape(batch[features.TIMESTAMP.name], [-1]).numpy() for batch in dataset
  )


def _timestamp_schema(schema: Any) -> Any:
  """The transformed schema reduced to `timestamp`, so only it is parsed."""
  reduced = type(schema)()
  reduced.CopyFrom(schema)
  del reduced.feature[:]
  found = [f for f in schema.feature if f.name == features.TIMESTAMP.name]
  if not found:
    raise ValueError(
        "the Transform output has no 'timestamp' feature (a Transform graph "
        "older than the time-based validation split): rerun Transform, or "
        "set validation_days=0"
    )
  reduced.feature.add().CopyFrom(found[0])
  return reduced


def make_transformed_dataset(
    file_pattern: list[str],
    data_accessor: Any,
    tf_transform_output: Any,
    batch_size: int,
    training: bool,
    seed: Optional[int] = None,
    time_range: Optional[TimeRange] = None,
) -> tf.data.Dataset:
  """Transform's output through TFX's data accessor -> (features, label) batches.

  Args:
    file_pattern: `fn_args.train_files` or `fn_args.eval_files`.
    data_accessor: `fn_args.data_accessor`.
    tf_transform_output: a `tft.TFTransformOutput` of the Transform graph.
    batch_size: examples per batch (global).
    training: shuffle and repeat forever; otherwise one pass.
    seed: shuffle seed.
    time_range: keep only the examples whose timestamp lies in it (None: all).
  """
  # Lazy as in count_transformed_days().
  from tfx_bsl.public import tfxio  # pylint: disable=g-import-not-at-top

  dataset = data_accessor.tf_dataset_factory(
      file_pattern,
      tfxio.TensorFlowDatasetOptions(
          batch_size=batch_size,
          label_key=features.LABEL_KEY,
          shuffle=training,
          shuffle_seed=seed,
          num_epochs=None if training else 1,
          drop_final_batch=training,
      ),
      tf_transform_output.transformed_metadata.schema,
  )
  dataset = dataset.map(
      lambda batch, label: (batch, tf.reshape(label, [-1])),
      num_parallel_calls=tf.data.AUTOTUNE,
  )
  if time_range is not None:
    # The accessor batches; filter example by example, then batch again
    # (full batches when training, as the accessor's drop_final_batch does).
    dataset = dataset.unbatch().filter(
        lambda example, label: time_range.mask(
            tf.reshape(example[features.TIMESTAMP.name], []))
    ).batch(batch_size, drop_remainder=training)
  return dataset
