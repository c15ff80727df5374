"""The Transform preprocessing_fn, run by tft_beam on a tiny dataset, against
hand-computed outputs."""

import tempfile

import numpy as np
import pytest
import tensorflow as tf

from pipeline import schema_builder
from preprocessing import features
from preprocessing import preprocessing_fn as pfn
from tests.hashing_reference import reference_slot

MAX_SEQ_LEN = 4
T = 1_700_000_000


def _examples():
  return [
      # 5 behaviours > max_seq_len: the 4 most recent are kept.
      dict(user_id=[7], item_id=[100], category_id=[3], timestamp=[T], label=[1],
           hist_item_ids=[1, 2, 3, 4, 5], hist_category_ids=[11, 12, 13, 14, 15],
           hist_timestamps=[T - 5000, T - 1000, T - 64, T - 3, T],
           hist_behavior_types=[0, 1, 2, 3, 0]),
      # 2 behaviours, no types (MovieLens-like): types default to pv.
      dict(user_id=[8], item_id=[200], category_id=[4], timestamp=[T], label=[0],
           hist_item_ids=[9, 10], hist_category_ids=[19, 20],
           hist_timestamps=[T - 2, T - 1], hist_behavior_types=[]),
      # Empty history.
      dict(user_id=[9], item_id=[300], category_id=[5], timestamp=[T], label=[0],
           hist_item_ids=[], hist_category_ids=[], hist_timestamps=[],
           hist_behavior_types=[]),
  ]


@pytest.fixture(scope="module")
def transformed():
  import tensorflow_transform as tft
  import tensorflow_transform.beam as tft_beam
  from tensorflow_transform.tf_metadata import schema_utils

  schema = schema_builder.build_schema(max_seq_len=MAX_SEQ_LEN)
  metadata = tft.DatasetMetadata(schema)
  spec = schema_utils.schema_as_feature_spec(schema).feature_spec
  assert isinstance(spec["item_id"], tf.io.FixedLenFeature)
  assert isinstance(spec["hist_item_ids"], tf.io.VarLenFeature)

  def fn(inputs, custom_config):
    return pfn.preprocessing_fn(inputs, custom_config)

  config = {"max_seq_len": MAX_SEQ_LEN, "history_length_edges": [0, 1, 3, 10]}
  with tempfile.TemporaryDirectory() as tmp, tft_beam.Context(temp_dir=tmp):
    (rows, _), _ = (_examples(), metadata) | tft_beam.AnalyzeAndTransformDataset(
        lambda inputs: fn(inputs, config))
  return rows


def test_sequences_are_truncated_and_left_padded(transformed):
  first, second, empty = transformed
  assert list(first["hist_item_ids"]) == [reference_slot(i, features.ITEM_ID.buckets) for i in (2, 3, 4, 5)]
  assert list(first["hist_category_ids"]) == [
      reference_slot(c, features.CATEGORY_ID.buckets) for c in (12, 13, 14, 15)]
  assert list(second["hist_item_ids"]) == [0, 0] + [reference_slot(i, features.ITEM_ID.buckets) for i in (9, 10)]
  assert list(empty["hist_item_ids"]) == [0, 0, 0, 0]
  assert [r["hist_length"] for r in transformed] == [4, 2, 0]


def test_time_gaps_types_and_scalars(transformed):
  first, second, empty = transformed
  # gaps 1000, 64, 3, 0 -> 1 + floor(log2(max(gap, 1))): 10, 7, 2, 1.
  assert list(first["hist_time_gap_buckets"]) == [10, 7, 2, 1]
  assert list(first["hist_behavior_types"]) == [2, 3, 4, 1]
  # No types in the log: pv (1) at valid positions, 0 for padding.
  assert list(second["hist_behavior_types"]) == [0, 0, 1, 1]
  assert list(second["hist_time_gap_buckets"]) == [0, 0, 2, 1]
  assert list(empty["hist_behavior_types"]) == [0, 0, 0, 0]
  assert [r["item_id"] for r in transformed] == [
      reference_slot(i, features.ITEM_ID.buckets) for i in (100, 200, 300)]
  assert [r["user_id"] for r in transformed] == [7, 8, 9]
  assert [r["label"] for r in transformed] == [1, 0, 0]


def test_slicing_outputs(transformed):
  # edges (0, 1, 3, 10): lengths 4, 2, 0 -> lower edges 3, 1, 0.
  assert [r[features.SLICE_HIST_LENGTH_BUCKET] for r in transformed] == [3, 1, 0]
  assert [r[features.SLICE_CATEGORY_ID] for r in transformed] == [3, 4, 5]


def test_history_length_bucket_edges_and_bad_config():
  lengths = tf.constant([0, 1, 9, 10, 99, 100, 5000], tf.int64)
  got = pfn.history_length_bucket(lengths, (0, 1, 10, 100)).numpy()
  np.testing.assert_array_equal(got, [0, 1, 1, 10, 10, 100, 100])
  with pytest.raises(ValueError, match="increasing"):
    pfn.history_length_bucket(lengths, (1, 10))
  with pytest.raises(ValueError, match="unknown custom_config"):
    pfn.parse_custom_config({"max_seq_len": 4, "max_seqlen": 5})
  with pytest.raises(ValueError, match=r"needs \['history_length_edges', 'max_seq_len'\]"):
    pfn.parse_custom_config({})
