"""The tf.data input over ingestion-format TFRecords."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from preprocessing import feature_spec
from preprocessing import features
from preprocessing import transforms
from trainer import input as input_lib
from trainer import toy_data


def write_files(tmp_path, examples, shards):
  paths = []
  for shard in range(shards):
    path = str(tmp_path / f"part-{shard:02d}.tfrecord.gz")
    toy_data.write_tfrecords(path, examples[shard::shards])
    paths.append(path)
  return paths


def key_of(features_row):
  return (int(features_row["user_id"]), int(features_row["item_id"]),
          tuple(features_row["hist_item_ids"].tolist()))


def test_eval_pass_reads_every_example_once_transformed(tmp_path):
  examples = toy_data.make_examples(toy_data.ToyDataConfig(num_examples=50, max_history=20))
  write_files(tmp_path, examples, shards=3)
  dataset = input_lib.make_dataset(
      str(tmp_path / "*.tfrecord.gz"), batch_size=8, max_seq_len=16, training=False
  )
  got = []
  for batch, labels in dataset:
    assert set(batch) == set(transforms.OUTPUT_FEATURES) - {features.LABEL_KEY}
    assert batch["hist_item_ids"].shape[1:] == [16]
    for i in range(labels.shape[0]):
      row = {name: batch[name][i].numpy() for name in batch}
      got.append((key_of(row), int(labels[i])))
  # Reference: each example transformed on its own.
  want = []
  for example in examples:
    single = {k: ([v] if not isinstance(v, list) else [v]) for k, v in example.items()}
    inputs = {
        k: tf.ragged.constant(v, dtype=tf.int64) if isinstance(example[k], list)
        else tf.constant(v, tf.int64)
        for k, v in single.items()
    }
    out = transforms.transform_features(inputs, 16)
    row = {name: out[name][0].numpy() for name in out}
    want.append((key_of(row), int(row["label"])))
  assert collections.Counter(got) == collections.Counter(want)


def test_training_stream_repeats_shuffles_and_keeps_full_batches(tmp_path):
  examples = toy_data.make_examples(toy_data.ToyDataConfig(num_examples=32, max_history=10))
  write_files(tmp_path, examples, shards=2)
  pattern = str(tmp_path / "*.gz")
  dataset = input_lib.make_dataset(
      pattern, batch_size=8, max_seq_len=12, training=True, shuffle_buffer=100, seed=1
  )
  batches = list(dataset.take(16))  # 128 examples: four passes over 32
  assert all(labels.shape[0] == 8 for _, labels in batches)
  assert batches[0][0]["hist_item_ids"].shape == [8, 12]
  keys = [
      key_of({name: b[name][i].numpy() for name in b})
      for b, _ in batches for i in range(8)
  ]
  assert len(set(keys)) == 32
  # Each pass is a permutation; the parallel map may only swap neighbouring
  # batches across a pass boundary, so every example shows up 3 to 5 times.
  assert set(collections.Counter(keys).values()) <= {3, 4, 5}
  ordered = [
      key_of({name: b[name][i].numpy() for name in b})
      for b, labels in input_lib.make_dataset(pattern, 8, 12, training=False)
      for i in range(labels.shape[0])
  ]
  assert sorted(ordered) == sorted(set(keys))
  assert keys[:32] != ordered  # shuffled


def test_examples_without_behavior_types_parse_as_views(tmp_path):
  examples = toy_data.make_examples(
      toy_data.ToyDataConfig(num_examples=12, max_history=6, with_behavior_types=False)
  )
  write_files(tmp_path, examples, shards=1)
  batch, _ = next(iter(input_lib.make_dataset(
      str(tmp_path / "*.gz"), batch_size=12, max_seq_len=8, training=False
  )))
  types = batch["hist_behavior_types"].numpy()
  length = batch["hist_length"].numpy()
  valid = np.arange(8)[None, :] >= 8 - length[:, None]
  assert np.all(types[valid] == 1) and np.all(types[~valid] == 0)


def test_missing_files_are_an_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no files"):
    input_lib.make_dataset(str(tmp_path / "none-*.gz"), 4, 8, training=False)


def test_raw_feature_spec_follows_the_registry():
  spec = feature_spec.raw_feature_spec()
  assert set(spec) == {f.name for f in features.ALL_FEATURES}
  assert features.LABEL_KEY not in feature_spec.raw_feature_spec(include_label=False)
  for feature in features.ALL_FEATURES:
    expected = tf.io.RaggedFeature if feature.is_sequence else tf.io.FixedLenFeature
    assert isinstance(spec[feature.name], expected)


def _spread_over_days(examples, days):
  """Moves example i (and its history) i % days UTC days later."""
  moved = []
  for i, example in enumerate(examples):
    shift = (i % days) * 86_400
    example = dict(example)
    example["timestamp"] += shift
    example["hist_timestamps"] = [t + shift for t in example["hist_timestamps"]]
    moved.append(example)
  return moved


def test_time_range_keeps_exactly_the_examples_of_its_days(tmp_path):
  examples = _spread_over_days(
      toy_data.make_examples(toy_data.ToyDataConfig(num_examples=60, max_history=8)), 3)
  write_files(tmp_path, examples, shards=2)
  pattern = str(tmp_path / "*.gz")
  by_day = collections.Counter(e["timestamp"] // 86_400 for e in examples)
  assert input_lib.count_days(pattern) == dict(sorted(by_day.items()))
  last_day = max(by_day)
  cutoff = last_day * 86_400
  newest = input_lib.make_dataset(pattern, 7, 8, training=False,
                                  time_range=input_lib.TimeRange(start=cutoff))
  got = sorted(int(t) for batch, _ in newest for t in batch["timestamp"].numpy())
  assert got == sorted(e["timestamp"] for e in examples if e["timestamp"] >= cutoff)
  older = input_lib.make_dataset(pattern, 8, 8, training=True, seed=0,
                                 time_range=input_lib.TimeRange(end=cutoff))
  seen = {int(t) for batch, labels in older.take(12) for t in batch["timestamp"].numpy()}
  assert all(labels.shape[0] == 8 for _, labels in older.take(3))  # full batches
  assert seen == {e["timestamp"] for e in examples if e["timestamp"] < cutoff}
