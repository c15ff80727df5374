"""transform_features against a pure-Python reference of the layout contract."""

import numpy as np
import pytest
import tensorflow as tf

from preprocessing import features
from preprocessing import transforms
from tests.hashing_reference import reference_slot

ITEM_BUCKETS = features.ITEM_ID.buckets
CATEGORY_BUCKETS = features.CATEGORY_ID.buckets


def reference_gap_bucket(gap):
  gap = max(int(gap), 1)
  return 1 + min(gap.bit_length() - 1, features.TIME_GAP_BUCKETS - 2)


def reference_transform(examples, max_seq_len):
  """Pure-Python, example by example: keep the last L, left-pad with 0."""
  out = {name: [] for name in transforms.OUTPUT_FEATURES}
  for ex in examples:
    n = len(ex["hist_item_ids"])
    keep = slice(max(0, n - max_seq_len), n)
    kept = min(n, max_seq_len)
    pad = [0] * (max_seq_len - kept)
    out["user_id"].append(ex["user_id"])
    out["label"].append(ex["label"])
    out["timestamp"].append(ex["timestamp"])
    out["item_id"].append(reference_slot(ex["item_id"], ITEM_BUCKETS))
    out["category_id"].append(reference_slot(ex["category_id"], CATEGORY_BUCKETS))
    out["hist_item_ids"].append(
        pad + [reference_slot(i, ITEM_BUCKETS) for i in ex["hist_item_ids"][keep]]
    )
    out["hist_category_ids"].append(
        pad + [reference_slot(c, CATEGORY_BUCKETS) for c in ex["hist_category_ids"][keep]]
    )
    out["hist_time_gap_buckets"].append(
        pad + [reference_gap_bucket(ex["timestamp"] - t) for t in ex["hist_timestamps"][keep]]
    )
    if "hist_behavior_types" in ex:
      types = [t + 1 for t in ex["hist_behavior_types"][keep]]
    else:
      types = [1] * kept
    out["hist_behavior_types"].append(pad + types)
    out["hist_length"].append(kept)
  return {k: np.array(v, dtype=np.int64) for k, v in out.items()}


def make_examples(rng, batch, max_len, with_types=True):
  examples = []
  for _ in range(batch):
    n = int(rng.integers(0, max_len + 1))
    timestamp = int(rng.integers(1_600_000_000, 1_700_000_000))
    ex = {
        "user_id": int(rng.integers(0, 10**9)),
        "item_id": int(rng.integers(0, 10**12)),
        "category_id": int(rng.integers(0, 10**6)),
        "timestamp": timestamp,
        "label": int(rng.integers(0, 2)),
        "hist_item_ids": [int(x) for x in rng.integers(0, 10**12, n)],
        "hist_category_ids": [int(x) for x in rng.integers(0, 10**6, n)],
        "hist_timestamps": sorted(
            int(timestamp - g) for g in rng.integers(1, 10**8, n)
        ),
    }
    if with_types:
      ex["hist_behavior_types"] = [int(x) for x in rng.integers(0, 4, n)]
    examples.append(ex)
  return examples


def to_inputs(examples, sequence_as="ragged", scalar_rank=1):
  inputs = {}
  for name in ("user_id", "item_id", "category_id", "timestamp", "label"):
    column = tf.constant([ex[name] for ex in examples], tf.int64)
    inputs[name] = column if scalar_rank == 1 else column[:, tf.newaxis]
  for f in features.SEQUENCE_FEATURES:
    if f.name not in examples[0]:
      continue
    ragged = tf.ragged.constant(
        [ex[f.name] for ex in examples], dtype=tf.int64, ragged_rank=1
    )
    inputs[f.name] = ragged.to_sparse() if sequence_as == "sparse" else ragged
  return inputs


def assert_outputs_equal(got, want):
  assert set(got) == set(want)
  for name in want:
    np.testing.assert_array_equal(got[name].numpy(), want[name], err_msg=name)


def hand_examples():
  """Three users: 3 behaviours, none, and 6 (more than L = 4)."""
  t = 1_700_000_000
  return [
      {
          "user_id": 7, "item_id": 100, "category_id": 5, "timestamp": t, "label": 1,
          "hist_item_ids": [11, 12, 13], "hist_category_ids": [1, 2, 3],
          "hist_timestamps": [t - 4096, t - 3, t - 1],
          "hist_behavior_types": [0, 3, 1],
      },
      {
          "user_id": 8, "item_id": 101, "category_id": 5, "timestamp": t, "label": 0,
          "hist_item_ids": [], "hist_category_ids": [],
          "hist_timestamps": [], "hist_behavior_types": [],
      },
      {
          "user_id": 9, "item_id": 102, "category_id": 6, "timestamp": t, "label": 0,
          "hist_item_ids": [21, 22, 23, 24, 25, 26],
          "hist_category_ids": [1, 1, 2, 2, 3, 3],
          "hist_timestamps": [t - 2**40, t - 2**31, t - 2**30, t - 1024, t - 1023, t],
          "hist_behavior_types": [0, 0, 1, 2, 3, 0],
      },
  ]


def test_hand_computed_layout():
  got = transforms.transform_features(to_inputs(hand_examples()), max_seq_len=4)
  np.testing.assert_array_equal(got["hist_length"], [3, 0, 4])
  # Hand-computed buckets: gaps 4096, 3, 1 -> 13, 2, 1; the truncated user
  # keeps its last four: 2**30 -> 31 (capped), 1024 -> 11, 1023 -> 10, 0 -> 1.
  np.testing.assert_array_equal(
      got["hist_time_gap_buckets"], [[0, 13, 2, 1], [0, 0, 0, 0], [31, 11, 10, 1]]
  )
  np.testing.assert_array_equal(
      got["hist_behavior_types"], [[0, 1, 4, 2], [0, 0, 0, 0], [2, 3, 4, 1]]
  )
  items = got["hist_item_ids"].numpy()
  assert items[0, 0] == 0 and items[1].tolist() == [0, 0, 0, 0]
  assert items[0, 3] == reference_slot(13, ITEM_BUCKETS)  # most recent last
  assert items[2, 0] == reference_slot(23, ITEM_BUCKETS)  # oldest kept
  np.testing.assert_array_equal(got["user_id"], [7, 8, 9])
  np.testing.assert_array_equal(got["label"], [1, 0, 0])
  assert_outputs_equal(got, reference_transform(hand_examples(), 4))


@pytest.mark.parametrize("max_seq_len", [1, 5, 16])
def test_random_batches_match_reference(max_seq_len):
  rng = np.random.default_rng(max_seq_len)
  examples = make_examples(rng, batch=9, max_len=2 * max_seq_len)
  got = transforms.transform_features(to_inputs(examples), max_seq_len)
  assert_outputs_equal(got, reference_transform(examples, max_seq_len))


def test_slots_in_range_and_padding_only_zero():
  rng = np.random.default_rng(0)
  examples = make_examples(rng, batch=32, max_len=40)
  got = transforms.transform_features(to_inputs(examples), max_seq_len=24)
  length = got["hist_length"].numpy()
  valid = np.arange(24)[None, :] >= 24 - length[:, None]
  for name, buckets in (("hist_item_ids", ITEM_BUCKETS), ("hist_category_ids", CATEGORY_BUCKETS)):
    ids = got[name].numpy()
    assert np.all(ids[~valid] == 0)
    assert np.all((ids[valid] >= 1) & (ids[valid] < buckets))
  for name in ("hist_time_gap_buckets", "hist_behavior_types"):
    assert np.all(got[name].numpy()[~valid] == 0)
    assert np.all(got[name].numpy()[valid] >= 1)
  assert np.all(got["item_id"].numpy() >= 1)
  assert np.all(got["item_id"].numpy() < ITEM_BUCKETS)


def test_short_sequence_is_the_static_tail():
  rng = np.random.default_rng(1)
  examples = make_examples(rng, batch=8, max_len=90)
  got = transforms.transform_features(to_inputs(examples), max_seq_len=64)
  tail = got["hist_item_ids"][:, -features.SHORT_SEQ_LEN:].numpy()
  for row, ex in zip(tail, examples):
    recent = ex["hist_item_ids"][-features.SHORT_SEQ_LEN:]
    want = [0] * (features.SHORT_SEQ_LEN - len(recent)) + [
        reference_slot(i, ITEM_BUCKETS) for i in recent
    ]
    assert row.tolist() == want


def test_sparse_ragged_and_scalar_ranks_agree():
  rng = np.random.default_rng(2)
  examples = make_examples(rng, batch=6, max_len=12)
  want = reference_transform(examples, 8)
  for sequence_as in ("ragged", "sparse"):
    for scalar_rank in (1, 2):
      got = transforms.transform_features(
          to_inputs(examples, sequence_as, scalar_rank), max_seq_len=8
      )
      assert_outputs_equal(got, want)


def test_missing_behavior_types_default_to_view():
  rng = np.random.default_rng(3)
  examples = make_examples(rng, batch=5, max_len=10, with_types=False)
  got = transforms.transform_features(to_inputs(examples), max_seq_len=8)
  want = reference_transform(examples, 8)
  assert_outputs_equal(got, want)
  types = got["hist_behavior_types"].numpy()
  assert set(np.unique(types)) <= {0, 1}


def test_label_is_optional():
  inputs = to_inputs(hand_examples())
  del inputs["label"]
  got = transforms.transform_features(inputs, max_seq_len=4)
  assert "label" not in got
  assert set(got) == set(transforms.OUTPUT_FEATURES) - {"label"}


def test_parse_example_in_graph_gives_static_shapes():
  """The serving path: serialized tf.Example -> parse -> transform in a tf.function."""
  examples = hand_examples()
  serialized = []
  for ex in examples:
    feature = {
        k: tf.train.Feature(int64_list=tf.train.Int64List(value=v if isinstance(v, list) else [v]))
        for k, v in ex.items()
    }
    serialized.append(
        tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
    )
  spec = {
      f.name: tf.io.VarLenFeature(tf.int64) if f.is_sequence
      else tf.io.FixedLenFeature([], tf.int64)
      for f in features.ALL_FEATURES
  }

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def serve(batch):
    return transforms.transform_features(tf.io.parse_example(batch, spec), 4)

  concrete = serve.get_concrete_function()
  for name in transforms.SEQUENCE_OUTPUTS:
    assert concrete.structured_outputs[name].shape.as_list() == [None, 4]
  assert concrete.structured_outputs["hist_length"].shape.as_list() == [None]
  got = serve(tf.constant(serialized))
  assert_outputs_equal(got, reference_transform(examples, 4))


def test_time_gap_buckets_exact_at_powers_of_two():
  gaps = [0, 1] + [2**k + d for k in range(1, 45) for d in (-1, 0, 1)]
  got = transforms.time_gap_bucket(tf.constant(gaps, tf.int64)).numpy()
  want = [reference_gap_bucket(g) for g in gaps]
  np.testing.assert_array_equal(got, want)
  assert got.max() == features.TIME_GAP_BUCKETS - 1


def test_mismatched_sequence_lengths_are_refused():
  examples = hand_examples()
  examples[0]["hist_category_ids"] = [1, 2]
  with pytest.raises(tf.errors.InvalidArgumentError, match="differ in length"):
    transforms.transform_features(to_inputs(examples), max_seq_len=4)


def test_behavior_type_out_of_range_is_refused():
  examples = hand_examples()
  examples[0]["hist_behavior_types"] = [0, 4, 1]
  with pytest.raises(tf.errors.InvalidArgumentError, match="out of range"):
    transforms.transform_features(to_inputs(examples), max_seq_len=4)


def test_bad_arguments_are_refused():
  inputs = to_inputs(hand_examples())
  with pytest.raises(ValueError, match="max_seq_len"):
    transforms.transform_features(inputs, max_seq_len=0)
  with pytest.raises(ValueError, match="max_seq_len"):
    transforms.transform_features(inputs, max_seq_len=features.MAX_SUPPORTED_SEQ_LEN + 1)
  with pytest.raises(ValueError, match="max_seq_len"):
    transforms.transform_features(inputs, max_seq_len=4.0)
  no_timestamps = dict(inputs)
  del no_timestamps["hist_timestamps"]
  with pytest.raises(ValueError, match="hist_timestamps"):
    transforms.transform_features(no_timestamps, max_seq_len=4)
  matrix = dict(inputs)
  matrix["item_id"] = tf.zeros([3, 2, 2], tf.int64)
  with pytest.raises(ValueError, match="item_id"):
    transforms.transform_features(matrix, max_seq_len=4)
  with pytest.raises(ValueError, match="buckets"):
    transforms.hash_ids(tf.constant([1], tf.int64), 1)


def test_examples_without_types_in_a_typed_batch_default_to_view():
  """Parsing a batch where some examples lack the feature gives empty rows."""
  examples = hand_examples()
  examples[0]["hist_behavior_types"] = []
  got = transforms.transform_features(to_inputs(examples), max_seq_len=4)
  np.testing.assert_array_equal(
      got["hist_behavior_types"], [[0, 1, 1, 1], [0, 0, 0, 0], [2, 3, 4, 1]]
  )
  examples[0]["hist_behavior_types"] = [0, 3]
  with pytest.raises(tf.errors.InvalidArgumentError, match="differ in length"):
    transforms.transform_features(to_inputs(examples), max_seq_len=4)


def test_hash_spreads_consecutive_ids_over_every_slot():
  """Consecutive raw ids (typical for item ids) land on all slots evenly."""
  slots = transforms.hash_ids(tf.range(200_000, dtype=tf.int64), CATEGORY_BUCKETS).numpy()
  counts = np.bincount(slots, minlength=CATEGORY_BUCKETS)
  assert counts[0] == 0 and (counts[1:] > 0).all()
  mean = 200_000 / (CATEGORY_BUCKETS - 1)
  # Poisson-like spread: 5 standard deviations either way.
  assert counts[1:].max() < mean + 5 * mean**0.5 and counts[1:].min() > mean - 5 * mean**0.5
  np.testing.assert_array_equal(
      slots[:50], [reference_slot(i, CATEGORY_BUCKETS) for i in range(50)]
  )
