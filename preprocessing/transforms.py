"""The TF preprocessing shared by Transform, the trainer's input and serving.

`transform_features` turns raw example tensors (as parsed from a
`tf.train.Example`) into the dense tensors the model reads. The TFX Transform
`preprocessing_fn`, the standalone trainer's `tf.data` pipeline and the
exported serving signature all call it, so training and serving see the same
features. It uses only core TF ops (no `tf.py_function`), so it runs inside
`tft.beam`, `tf.data` and a SavedModel that TF Serving loads.

Layout of the outputs (all dense, batch first):
  * `item_id`, `category_id`: int64 [B], hashed slots in [1, buckets).
  * `hist_item_ids`, `hist_category_ids`, `hist_time_gap_buckets`,
    `hist_behavior_types`: int64 [B, max_seq_len], LEFT-padded with 0. The
    valid behaviours occupy the last `hist_length` positions, oldest first,
    the most recent at index max_seq_len - 1, so the short-term sequence is
    the static slice `[:, -SHORT_SEQ_LEN:]`. A longer history keeps its most
    recent max_seq_len behaviours.
  * `hist_length`: int64 [B].
  Behaviour types are stored as type index + 1 (0 = padding); an example
  without types (absent feature or empty list) gets 1 (pv) everywhere.
  * `label`, `user_id`: int64 [B], passed through when present.
  * `timestamp`: int64 [B], the impression's raw Unix seconds, passed
    through so the TFX Trainer can hold out the newest training days for
    early stopping (the model does not read it).
"""

from __future__ import annotations

from typing import Mapping, Union

import tensorflow as tf

from preprocessing import features
from preprocessing import typed_config

TensorLike = Union[tf.Tensor, tf.SparseTensor, tf.RaggedTensor]

HIST_TIME_GAP_BUCKETS = "hist_time_gap_buckets"
HIST_LENGTH = "hist_length"
# Names of the outputs of `transform_features`, in a stable order.
OUTPUT_FEATURES: tuple[str, ...] = (
    features.USER_ID.name,
    features.ITEM_ID.name,
    features.CATEGORY_ID.name,
    features.HIST_ITEM_IDS.name,
    features.HIST_CATEGORY_IDS.name,
    HIST_TIME_GAP_BUCKETS,
    features.HIST_BEHAVIOR_TYPES.name,
    HIST_LENGTH,
    features.LABEL.name,
    features.TIMESTAMP.name,
)
# Outputs of shape [B, max_seq_len]; the others are [B].
SEQUENCE_OUTPUTS: tuple[str, ...] = (
    features.HIST_ITEM_IDS.name,
    features.HIST_CATEGORY_IDS.name,
    HIST_TIME_GAP_BUCKETS,
    features.HIST_BEHAVIOR_TYPES.name,
)


# splitmix64's constants (Steele et al., "Fast splittable pseudorandom number
# generators", 2014): a bijective, well-mixing 64-bit finaliser.
_SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
_SPLITMIX_MULTIPLIERS = ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB))
_SPLITMIX_LAST_SHIFT = 31
# The slot is taken from the top 31 bits of the mixed id.
_SLOT_BITS = 31


def hash_ids(ids: tf.Tensor, buckets: int) -> tf.Tensor:
  """Raw int64 ids -> stable slots in [1, buckets); slot 0 stays for padding.

  slot = 1 + (top 31 bits of splitmix64(id)) * (buckets - 1) >> 31, in
  integer ops only: no string conversion per id, which dominated serving's
  per-request history transform (10,000 ids: ~5 ms as strings, ~0.2 ms so).
  Deterministic across processes and releases, so an item keeps its slot
  across daily retrains.
  """
  if buckets < 2:
    raise ValueError(f"buckets must be >= 2 (slot 0 is padding), got {buckets}")
  if buckets - 1 >= 1 << 32:
    raise ValueError(f"buckets must be < 2**32, got {buckets}")
  unsigned = lambda v: tf.constant(v, tf.uint64)
  z = tf.bitcast(tf.cast(ids, tf.int64), tf.uint64) + unsigned(_SPLITMIX_GAMMA)
  for shift, multiplier in _SPLITMIX_MULTIPLIERS:
    z = tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, unsigned(shift)))
    z = z * unsigned(multiplier)
  z = tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, unsigned(_SPLITMIX_LAST_SHIFT)))
  top = tf.bitcast(tf.bitwise.right_shift(z, unsigned(64 - _SLOT_BITS)), tf.int64)
  # top < 2**31 and buckets - 1 < 2**32: the product fits int64.
  return 1 + tf.bitwise.right_shift(top * (buckets - 1), tf.constant(_SLOT_BITS, tf.int64))


# Bucket k + 1 starts at 2**k seconds (k >= 1); see time_gap_bucket.
_GAP_THRESHOLDS = tuple(1 << k for k in range(1, features.TIME_GAP_BUCKETS - 1))


def time_gap_bucket(gap_seconds: tf.Tensor) -> tf.Tensor:
  """Seconds -> 1 + min(floor(log2(max(gap, 1))), TIME_GAP_BUCKETS - 2).

  Computed exactly in integers (the count of powers of two <= gap, by a
  binary search over the thresholds), since a float log2 rounds wrongly at
  some exact powers of two. Gaps below one second (equal or out-of-order
  timestamps) fall into bucket 1.
  """
  gap = tf.cast(gap_seconds, tf.int64)
  thresholds = tf.constant(_GAP_THRESHOLDS, tf.int64)
  flat = tf.reshape(gap, [1, -1])
  doublings = tf.searchsorted(
      thresholds[tf.newaxis], flat, side="right", out_type=tf.int64
  )
  return 1 + tf.reshape(doublings, tf.shape(gap))


def _scalar(name: str, value: TensorLike) -> tf.Tensor:
  """A scalar feature given as [B], [B, 1] (dense, sparse or ragged) -> [B]."""
  if isinstance(value, tf.SparseTensor):
    value = tf.sparse.to_dense(value)
  elif isinstance(value, tf.RaggedTensor):
    value = value.to_tensor()
  value = tf.convert_to_tensor(value)
  if value.shape.rank == 1:
    return tf.cast(value, tf.int64)
  if value.shape.rank == 2 and value.shape[1] in (1, None):
    tf.debugging.assert_equal(
        tf.shape(value)[1], 1,
        message=f"scalar feature {name!r} must have exactly one value per example",
    )
    return tf.cast(value[:, 0], tf.int64)
  raise ValueError(
      f"scalar feature {name!r} must have shape [B] or [B, 1], got {value.shape}"
  )


def _ragged(name: str, value: TensorLike) -> tf.RaggedTensor:
  """A var-length feature given as SparseTensor, RaggedTensor or dense -> ragged [B, None]."""
  if isinstance(value, tf.SparseTensor):
    if value.shape.rank != 2:
      raise ValueError(
          f"sequence feature {name!r} must be rank 2 [B, None], got {value.shape}"
      )
    value = tf.RaggedTensor.from_sparse(value)
  elif isinstance(value, tf.RaggedTensor):
    if value.shape.rank != 2:
      raise ValueError(
          f"sequence feature {name!r} must be rank 2 [B, None], got {value.shape}"
      )
  else:
    value = tf.convert_to_tensor(value)
    if value.shape.rank != 2:
      raise ValueError(
          f"sequence feature {name!r} must be rank 2 [B, N], got {value.shape}"
      )
    value = tf.RaggedTensor.from_tensor(value)
  return value.with_values(tf.cast(value.values, tf.int64))


class _LeftPadder:
  """Places each row's last `max_seq_len` values at the right end of a dense row.

  Positions are computed once from the row lengths of the reference
  sequence and reused for every sequence of the same example.
  """

  def __init__(self, reference: tf.RaggedTensor, max_seq_len: int):
    self.max_seq_len = max_seq_len
    self.row_lengths = reference.row_lengths()
    self.batch_size = reference.nrows()
    row_ids = reference.value_rowids()
    position_in_row = tf.range(
        tf.shape(reference.values, out_type=tf.int64)[0], dtype=tf.int64
    ) - tf.gather(reference.row_starts(), row_ids)
    column = max_seq_len - tf.gather(self.row_lengths, row_ids) + position_in_row
    # Values older than the most recent max_seq_len get a negative column.
    self.keep = column >= 0
    self.row_ids = row_ids
    self.scatter_indices = tf.stack(
        [tf.boolean_mask(row_ids, self.keep), tf.boolean_mask(column, self.keep)],
        axis=1,
    )

  def pad(self, values: tf.Tensor) -> tf.Tensor:
    """Flat per-behaviour values (aligned with the reference) -> [B, max_seq_len]."""
    dense = tf.scatter_nd(
        self.scatter_indices,
        tf.boolean_mask(values, self.keep),
        tf.stack([self.batch_size, tf.constant(self.max_seq_len, tf.int64)]),
    )
    dense.set_shape([None, self.max_seq_len])
    return dense


def transform_features(
    inputs: Mapping[str, TensorLike], max_seq_len: int
) -> dict[str, tf.Tensor]:
  """Raw example tensors -> the model's dense features (see module docstring).

  Args:
    inputs: feature name -> tensor, with the names of `preprocessing.features`.
      Scalars (`user_id`, `item_id`, `category_id`, `timestamp`, optional
      `label`) as [B] or [B, 1]; sequences (`hist_item_ids`,
      `hist_category_ids`, `hist_timestamps`, optional `hist_behavior_types`)
      as SparseTensor or RaggedTensor [B, None], all of one example the same
      length, except that an example may have no behaviour types at all
      (then every behaviour counts as pv). Other keys are ignored.
    max_seq_len: the static length of the output sequences.

  Returns:
    dict of int64 tensors named by `OUTPUT_FEATURES` (`label` only if given).

  Raises:
    ValueError: a required feature is missing, a shape is wrong, or
      max_seq_len is out of range.
    tf.errors.InvalidArgumentError (at run time): the sequences of one example
      have different lengths, or a behaviour type is out of range.
  """
  typed_config.max_seq_len_value(max_seq_len)
  missing = [
      f.name for f in features.ALL_FEATURES
      if f.required and f is not features.LABEL and f.name not in inputs
  ]
  if missing:
    raise ValueError(
        f"transform_features: missing input features {missing}; got {sorted(inputs)}"
    )

  outputs: dict[str, tf.Tensor] = {}
  for feature in (features.USER_ID, features.LABEL):
    if feature.name in inputs:
      outputs[feature.name] = _scalar(feature.name, inputs[feature.name])
  for feature in (features.ITEM_ID, features.CATEGORY_ID):
    outputs[feature.name] = hash_ids(
        _scalar(feature.name, inputs[feature.name]), feature.buckets
    )
  timestamp = _scalar(features.TIMESTAMP.name, inputs[features.TIMESTAMP.name])
  outputs[features.TIMESTAMP.name] = timestamp

  sequence_features = [
      features.HIST_ITEM_IDS, features.HIST_CATEGORY_IDS, features.HIST_TIMESTAMPS
  ]
  has_types = features.HIST_BEHAVIOR_TYPES.name in inputs
  if has_types:
    sequence_features.append(features.HIST_BEHAVIOR_TYPES)
  sequences = {f.name: _ragged(f.name, inputs[f.name]) for f in sequence_features}
  reference = sequences[features.HIST_ITEM_IDS.name]
  checks = [
      tf.debugging.assert_equal(
          sequences[name].row_lengths(), reference.row_lengths(),
          message=f"{name} and {features.HIST_ITEM_IDS.name} differ in length",
      )
      for name in sequences
      if name not in (features.HIST_ITEM_IDS.name, features.HIST_BEHAVIOR_TYPES.name)
  ]
  if has_types:
    type_lengths = sequences[features.HIST_BEHAVIOR_TYPES.name].row_lengths()
    # An example without types parses to an empty row: it means "absent".
    checks.append(tf.debugging.assert_equal(
        (type_lengths == reference.row_lengths()) | (type_lengths == 0), True,
        message=(
            f"{features.HIST_BEHAVIOR_TYPES.name} and "
            f"{features.HIST_ITEM_IDS.name} differ in length"
        ),
    ))
    types = sequences[features.HIST_BEHAVIOR_TYPES.name].values
    checks.append(tf.debugging.assert_less(
        types, tf.constant(len(features.BEHAVIOR_TYPES), tf.int64),
        message="hist_behavior_types out of range",
    ))
    checks.append(tf.debugging.assert_non_negative(
        types, message="hist_behavior_types out of range"
    ))
  with tf.control_dependencies(checks):
    padder = _LeftPadder(reference, max_seq_len)

  for feature in (features.HIST_ITEM_IDS, features.HIST_CATEGORY_IDS):
    outputs[feature.name] = padder.pad(
        hash_ids(sequences[feature.name].values, feature.buckets)
    )
  gaps = (
      tf.gather(timestamp, padder.row_ids)
      - sequences[features.HIST_TIMESTAMPS.name].values
  )
  outputs[HIST_TIME_GAP_BUCKETS] = padder.pad(time_gap_bucket(gaps))
  # Logs without types (MovieLens) count every behaviour as a view (pv).
  type_slots = tf.ones_like(reference.values)
  if has_types:
    has_row_types = tf.gather(type_lengths > 0, padder.row_ids)
    value_positions = tf.boolean_mask(
        tf.range(tf.size(type_slots, out_type=tf.int64)), has_row_types
    )
    type_slots = tf.tensor_scatter_nd_update(
        type_slots, value_positions[:, tf.newaxis], types + 1
    )
  outputs[features.HIST_BEHAVIOR_TYPES.name] = padder.pad(type_slots)
  outputs[HIST_LENGTH] = tf.minimum(
      padder.row_lengths, tf.constant(max_seq_len, tf.int64)
  )
  return outputs
